"""`phi3kit doctor` (`kit.doctor()`): what this machine has, what Phi-3-mini needs, and which route to take.

Facts are gathered once (`gather()`), then turned into a recommendation by a pure function
(`recommend()`), so the advice can be tested against any machine's facts without that machine.

Rooms: `facts` (what the advice decides from, and what an export needs), `probes` (reading this machine, each
backend through the registry), `advice` (the recommendation and its notes), `table` (the report's rows).
"""

from __future__ import annotations

from ..machine import ISA_FLAGS, LIBRARIES, capabilities_isa, cpu_info, isa_features, library_version
from .advice import ORT_OTHERS, Recommendation, machine_notes, recommend, with_ready_made
from .facts import (
    ASCII_HOME,
    DOWNLOAD_GB,
    LONG_PATHS_KEY,
    LONGEST_HUB_FILE,
    MAX_PATH,
    NEEDS,
    RECOMMENDED_MODEL,
    Facts,
    Need,
)
from .probes import ORT_BACKEND, ORT_FLAVOURS, gather, long_paths_enabled, os_description, windows_release
from .table import Report, doctor, fit, report

__all__ = [
    "ASCII_HOME", "DOWNLOAD_GB", "ISA_FLAGS", "LIBRARIES", "LONGEST_HUB_FILE", "LONG_PATHS_KEY", "MAX_PATH", "NEEDS",
    "ORT_BACKEND", "ORT_FLAVOURS", "ORT_OTHERS", "RECOMMENDED_MODEL", "Facts", "Need", "Recommendation", "Report",
    "capabilities_isa", "cpu_info", "doctor", "fit", "gather", "isa_features", "library_version",
    "long_paths_enabled", "machine_notes", "os_description", "recommend", "report", "windows_release",
    "with_ready_made",
]
