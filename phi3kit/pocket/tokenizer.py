"""A tiny Phi-3-style tokenizer trained in-process, so tests and workshops need no model hub.

Byte-level BPE (like GPT-2) rather than SentencePiece: every string encodes without unknown
tokens and decodes back exactly, and the HF, OpenVINO and ONNX Runtime GenAI tokenizers built
from it agree token for token (a SentencePiece-style one did not, in ONNX Runtime GenAI).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
END = "<|end|>"
# Order fixes the ids: <|endoftext|> is 0, then the Phi-3 role tags and <|end|>.
SPECIAL_TOKENS: tuple[str, ...] = (EOS, "<|system|>", "<|user|>", "<|assistant|>", END)

# Phi-3-mini-instruct's own template: each message is '<|role|>\n' + content + '<|end|>\n'.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] in ['system', 'user', 'assistant'] %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


def build_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a deterministic byte-level BPE on `texts` and wrap it as a Phi-3 chat tokenizer.

    The result may hold fewer than `vocab_size` tokens when the texts run out of pairs to
    merge; size the model's vocab with `len(tokenizer)`, never with `vocab_size`.
    """
    tok = Tokenizer(models.BPE())
    # No prefix space: Phi-3 prompts start with a special tag, and byte-level pieces keep
    # round trips exact.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Sorted input: the trainer's result must not depend on the order texts arrive in.
    tok.train_from_iterator(sorted(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        pad_token=EOS,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_input_names=["input_ids", "attention_mask"],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        add_bos_token=False,
        add_eos_token=False,
    )
