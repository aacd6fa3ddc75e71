"""lmforge.tokenizer (layer 2): tokenizers, GGUF vocabularies, chat templates and loss masks."""

from lmforge.tokenizer.chat import (
    DEFAULT_CHAT_TEMPLATE,
    ROLES,
    ChatTemplate,
    render_conversation,
    validate_messages,
)
from lmforge.tokenizer.gguf_vocab import (
    SUPPORTED_PRE_TOKENIZERS,
    GGUFTokenizerInfo,
    gguf_tokenizer_info,
    tokenizer_from_gguf_metadata,
)
from lmforge.tokenizer.tokenizer import CHAT_END_TOKENS, StreamDecoder, Tokenizer

__all__ = [
    "CHAT_END_TOKENS",
    "DEFAULT_CHAT_TEMPLATE",
    "ROLES",
    "SUPPORTED_PRE_TOKENIZERS",
    "ChatTemplate",
    "GGUFTokenizerInfo",
    "StreamDecoder",
    "Tokenizer",
    "gguf_tokenizer_info",
    "render_conversation",
    "tokenizer_from_gguf_metadata",
    "validate_messages",
]
