"""The kernel a run executes in: this interpreter, headless, whatever kernelspecs are installed; papermill's
output tidied as Jupyter saves a cell."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import HEADLESS_ENV

# The kernel `phi3kit run` starts is this interpreter, whatever kernelspecs are installed: a `python3`
# kernelspec from another installation on the Jupyter path would otherwise win ("No module named phi3kit").
KERNEL_NAME = "phi3kit-own-python"


def kernel_manager_class(started: list[Any] | None = None) -> type:
    """A jupyter_client kernel manager whose KERNEL_NAME is this Python (sys.executable) running ipykernel; each
    manager made is appended to `started` (so an interrupted run can end its kernel)."""
    import ipykernel.kernelspec
    from jupyter_client import AsyncKernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    class OwnKernelSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str) -> Any:
            if kernel_name != KERNEL_NAME:
                return super().get_kernel_spec(kernel_name)
            spec = ipykernel.kernelspec.get_kernel_dict()
            spec["env"] = {HEADLESS_ENV: "1"}
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES, **spec)

    class OwnKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("kernel_spec_manager", OwnKernelSpecs())
            super().__init__(**kwargs)
            if started is not None:
                started.append(self)

    return OwnKernelManager


def execute(notebook: str | Path, out: str | Path, parameters: dict[str, Any], timeout_s: int | None) -> None:
    """papermill.execute_notebook in this interpreter's own kernel, headless."""
    import warnings

    import papermill

    started: list[Any] = []
    try:
        with warnings.catch_warnings(), kill_kernels_on_ctrl_c(started):
            # `out` may be the temporary name a result is written under (no .ipynb)
            warnings.filterwarnings("ignore", message=r"The specified file .* does not end in one of")
            papermill.execute_notebook(str(notebook), str(out), parameters=parameters,
                                       cwd=str(Path(notebook).parent), progress_bar=False,
                                       execution_timeout=timeout_s, kernel_name=KERNEL_NAME,
                                       kernel_manager_class=kernel_manager_class(started))
    except KeyboardInterrupt:
        end_interrupted(started)
        raise


@contextlib.contextmanager
def kill_kernels_on_ctrl_c(started: list[Any]) -> Iterator[None]:
    """Ctrl-C kills the run's kernels first, then raises KeyboardInterrupt as Python does.

    When the interrupt lands inside nbclient's coroutine (not in its wait for the kernel), nbclient's clean-up runs
    at once: jupyter_client's shutdown interrupts the kernel (SIGINT) before asking it to stop, and the kernel logged
    "KeyboardInterrupt caught in kernel." onto the learner's terminal before the kit's own line. A dead kernel says
    nothing. Only where Python's own handler is in place (a learner's handler, or a kernel's, is left alone)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def on_ctrl_c(signum: int, frame: Any) -> None:
        _kill_kernels(started)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def end_interrupted(managers: list[Any]) -> None:
    """After Ctrl-C: kill the run's kernel and wait for it, and settle what nbclient left pending.

    A KeyboardInterrupt stops nbclient's event loop mid-step, so its own clean-up never runs: the kernel (still
    starting, or running a cell) lived on until it noticed its parent had gone, and logged that after the kit's
    "interrupted" line; the abandoned task could later log a DeadKernelError traceback. Killing the process is
    what Jupyter's "shut down now" does; the tasks are cancelled and awaited so nothing is left to report. A
    kernel whose launch the interrupt cut short is not in its manager yet: it is found among this process's
    children by its connection file.
    """
    import asyncio

    _kill_kernels(managers)
    from jupyter_core.utils import ensure_event_loop

    loop = ensure_event_loop()
    if loop.is_running():  # called from inside a running loop (a notebook's own): nothing of ours is pending here
        return
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        with contextlib.suppress(BaseException):
            loop.run_until_complete(asyncio.wait(pending, timeout=10))
    for task in pending:  # retrieve each outcome: an exception nobody read would be logged at exit
        if task.done() and not task.cancelled():
            task.exception()
    _kill_kernels(managers)  # one the cancelled tasks finished launching
    for km in managers:  # the connection file of a kernel that was killed (AsyncKernelManager's is a coroutine)
        with contextlib.suppress(BaseException):
            loop.run_until_complete(km.cleanup_resources(restart=False))


def _kill_kernels(managers: list[Any]) -> None:
    """Kill, and wait for, the kernels of `managers`: by their process, or by their connection file on the command
    line of one of this process's children."""
    import psutil

    pids = set()
    for km in managers:
        process = getattr(getattr(km, "provisioner", None), "process", None)  # LocalProvisioner's Popen
        if process is not None and process.poll() is None:
            pids.add(process.pid)
    files = {str(km.connection_file) for km in managers if getattr(km, "connection_file", "")}
    victims = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.pid in pids or (files and files & set(child.cmdline())):
                    victims.append(child)
    for child in victims:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(victims, timeout=10)


def merge_streams(outputs: list[Any]) -> list[Any]:
    """One stdout entry instead of one per streamed chunk, as Jupyter itself saves a cell."""
    merged: list[Any] = []
    for o in outputs:
        if o.output_type == "stream" and merged and merged[-1].output_type == "stream" and merged[-1].name == o.name:
            merged[-1].text += o.text
        else:
            merged.append(o)
    return merged


def tidy(notebook: Path) -> None:
    """papermill stores every streamed chunk as its own output; handouts would show one per line."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
    nbformat.write(nb, str(notebook))
