"""Chat: the file's chat template rendered as transformers' apply_chat_template does, and a session
that keeps the conversation in one KV cache.

    chat(model, [{"role": "user", "content": "Hi"}], seed=1) -> Completion (or an iterator, stream=True)
    ChatTemplate.from_model(model).render(messages) -> str;  chat_ids(model, messages) -> ids
    ChatSession(model, system="...").ask("Hi") -> iterator of text pieces (the REPL's engine)

The template (`tokenizer.chat_template`, jinja2) comes from the file, so it is untrusted: it runs in
jinja2's ImmutableSandboxedEnvironment (an unsandboxed template is code execution, CVE-2024-34359),
and an unsafe attribute (`''.__class__`) raises a SecurityError instead of rendering as empty. The
sandbox bounds time and memory too (a SecurityError past a limit, see TemplateLimits): the work of one
rendering (range() items and function or macro calls), the length of what `*`, `+` and `~` build and
of the output, and the size of `**`; deep recursion is a ChatTemplateError, not a crash.
Like transformers: trim_blocks and lstrip_blocks, the loopcontrols extension, a `tojson` filter that
keeps non-ASCII text, the variables `messages`, `add_generation_prompt`, `bos_token`, `eos_token`
(and the other special tokens' texts), the helpers `raise_exception(message)` and
`strftime_now(format)`. A file without a template (a base model) gets its family's turn format, chosen
by the tokens the vocabulary has (FALLBACK_TEMPLATES: Gemma's <start_of_turn>, Phi-3's <|user|>,
Llama 3's headers, ChatML's <|im_start|>), else ChatML as llama.cpp does.

The rendered text is tokenized with special tokens parsed (`<|im_start|>` is one id), with BOS
added when the file asks for it unless the text already starts with the BOS token's text.

Templates that have no system role (rendering a system message raises, or drops its text) get the
system text merged into the first user message: "SYSTEM\\n\\nUSER".
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import TYPE_CHECKING, Iterator, Mapping, NamedTuple, Sequence

from .gguf import GGUFError
from .generate import TokenStream, check_max_tokens, check_options, generate_ids, keep_prefix, reusable_prefix
from .sampling import Sampler, SamplingParams
from .speculative import DRAFT_MAX, check_draft, speculator

if TYPE_CHECKING:
    from .model import Model

__all__ = ["ChatTemplate", "ChatTemplateError", "ChatSession", "CHATML_TEMPLATE", "GEMMA_TEMPLATE", "PHI3_TEMPLATE",
           "LLAMA3_TEMPLATE", "FALLBACK_TEMPLATES", "FallbackTemplate", "fallback_template", "chat", "chat_ids",
           "check_messages"]

KEY_CHAT_TEMPLATE = "tokenizer.chat_template"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma 3's own template (its instruction-tuned files carry it): no system role, so a system message
# starts the first user turn, followed by a blank line; "assistant" is "model"; turns alternate.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

# Phi-3's (Phi-3.5-mini-instruct's): <|role|> turns ended by <|end|>.
PHI3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' and message['content'] %}"
    "{{ '<|system|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)

# Llama 3's turns: a header per role, ended by <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim }}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


class FallbackTemplate(NamedTuple):
    """A template for files without tokenizer.chat_template (base models, most often): a family's own
    turn format, chosen by the tokens that format needs."""

    name: str
    tokens: tuple[str, ...]  # all in the vocabulary: the format can be written with single tokens
    architectures: tuple[str, ...]  # general.architecture values of the family, tried first
    source: str


# In order of preference; a file whose vocabulary has none of these gets ChatML, as llama.cpp does.
FALLBACK_TEMPLATES = (
    FallbackTemplate("gemma", ("<start_of_turn>", "<end_of_turn>"), ("gemma", "gemma2", "gemma3", "gemma3n"),
                     GEMMA_TEMPLATE),
    FallbackTemplate("phi3", ("<|user|>", "<|assistant|>", "<|end|>"), ("phi3",), PHI3_TEMPLATE),
    FallbackTemplate("llama3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), ("llama",),
                     LLAMA3_TEMPLATE),
    FallbackTemplate("chatml", ("<|im_start|>", "<|im_end|>"), ("qwen2", "qwen3", "qwen2moe", "qwen3moe"),
                     CHATML_TEMPLATE),
)


def fallback_template(architecture: str | None, tokenizer) -> FallbackTemplate:
    """The family template for a file without one: the first whose tokens the vocabulary has, those of
    the file's architecture first; ChatML when none fits."""
    fits = [t for t in FALLBACK_TEMPLATES if all(tokenizer.token_id(text) is not None for text in t.tokens)]
    for template in fits:
        if architecture in template.architectures:
            return template
    return fits[0] if fits else FALLBACK_TEMPLATES[-1]


class ChatTemplateError(ValueError):
    """The chat template cannot be compiled or rendered (a syntax error, raise_exception(), or an
    unsafe operation that the sandbox refused: the jinja2 SecurityError is the __cause__)."""


def check_messages(messages) -> list[dict]:
    """messages: a sequence of {"role": str, "content": str}; ValueError naming the bad one."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise ValueError("messages is empty")
    checked = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}]['role'] must be a non-empty str, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}]['content'] must be a str, got {type(content).__name__}")
        checked.append(dict(m))
    return checked


class TemplateLimits(NamedTuple):
    """What one rendering of a chat template may do. Real templates loop over the messages and call a
    few filters: far below each."""

    steps: int = 200_000  # range() items and calls (functions, methods, macros), together
    length: int = 2**24  # characters (or items) of a value built by *, + or ~, and of the output
    power_bits: int = 4096  # bits of an integer built by **


def _sandbox(limits: TemplateLimits = TemplateLimits()):
    import jinja2.ext
    from jinja2.exceptions import SecurityError, TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def check_length(n: int) -> None:
        if n > limits.length:
            raise SecurityError(f"the template builds a value of {n} items, more than {limits.length}")

    def size(value) -> int:
        """Characters of a string, or of the strings in a list or tuple (other items count one)."""
        if isinstance(value, str):
            return len(value)
        return sum(len(v) if isinstance(v, str) else 1 for v in value)

    def check_arguments(args, kwargs) -> None:
        """A width, count or length beyond the limit (str.ljust(10**12), center(10**12), ...)."""
        for value in (*args, *kwargs.values()):
            if isinstance(value, int) and value > limits.length:
                raise SecurityError(f"the template passes {value}, more than {limits.length}, to a function")

    def guarded(function):
        """A filter whose arguments (after the value, and the environment or context that jinja2 passes
        some filters first) and result are held to the limits."""
        skip = 2 if getattr(function, "jinja_pass_arg", None) else 1

        @functools.wraps(function)  # keeps jinja_pass_arg
        def run(*args, **kwargs):
            check_arguments(args[skip:], kwargs)
            result = function(*args, **kwargs)
            if isinstance(result, (str, list, tuple)):
                check_length(size(result))
            return result
        return run

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "+", "**"])

        def unsafe_undefined(self, obj, attribute):
            # jinja2 would return an undefined value that prints as "": refuse loudly instead
            raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} object is unsafe")

        def start(self) -> None:
            """A new rendering: its work budget starts again."""
            self.steps = 0

        def step(self, n: int = 1) -> None:
            self.steps += n
            if self.steps > limits.steps:
                raise SecurityError(f"the template does more than {limits.steps} steps (loop items and calls)")

        def call(self, context, obj, /, *args, **kwargs):
            self.step()
            check_arguments(args, kwargs)
            return super().call(context, obj, *args, **kwargs)

        def call_binop(self, context, op, left, right):
            sized = (str, list, tuple)
            if op == "*" and isinstance(left, sized) and isinstance(right, int):
                check_length(size(left) * right)
            elif op == "*" and isinstance(right, sized) and isinstance(left, int):
                check_length(size(right) * left)
            elif op == "+" and isinstance(left, sized) and isinstance(right, sized):
                check_length(size(left) + size(right))
            elif op == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                    and max(left.bit_length(), 1) * right > limits.power_bits:
                raise SecurityError(f"the template raises {left} to the power {right}: too large")
            return super().call_binop(context, op, left, right)

    def budgeted_range(*args):
        items = range(*args)
        env.step(len(items))
        return items

    def bounded_join(values) -> str:
        """jinja2's `~` (str_join): the strings joined, refused past the length limit."""
        parts = [str(v) for v in values]
        check_length(sum(map(len, parts)))
        return "".join(parts)

    def raise_exception(message):
        raise TemplateError(message)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.filters = {name: guarded(f) for name, f in env.filters.items()}
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["range"] = budgeted_range
    env.bounded_join = bounded_join
    env.limits = limits
    env.start()
    return env


class ChatTemplate:
    """A compiled chat template. special_tokens: the texts passed to the template (bos_token, ...)."""

    def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None) -> None:
        from jinja2.exceptions import TemplateError

        if not isinstance(source, str):
            raise GGUFError(f"{KEY_CHAT_TEMPLATE} must be a string, got {type(source).__name__}")
        self.source = source
        self.special_tokens = dict(special_tokens or {})
        self._env = _sandbox()
        try:
            self._template = self._env.from_string(source)
        except (TemplateError, SyntaxError, RecursionError, MemoryError) as e:  # SyntaxError: Python's limits
            raise GGUFError(f"{KEY_CHAT_TEMPLATE} does not compile: {type(e).__name__}: {e}") from e
        # `~` compiles to a call of str_join, a name of the compiled template's module: the sandbox
        # cannot intercept it as it does + and *, so the template gets a join that checks the length.
        self._template.root_render_func.__globals__["str_join"] = self._env.bounded_join
        self._supports_system: bool | None = None
        self.name = "given"  # where the source came from: "file", a fallback's name (from_model), or "given"

    @classmethod
    def from_model(cls, model: Model) -> ChatTemplate:
        """The file's template (a family's when it has none: see FALLBACK_TEMPLATES), with its special
        tokens' texts. `name` says which: "file", or the fallback's name."""
        tokenizer = model.tokenizer
        special = {}
        for name in ("bos", "eos", "unk"):
            token_id = getattr(tokenizer, f"{name}_id")
            special[f"{name}_token"] = tokenizer.token_text(token_id) if token_id is not None else ""
        source = model.metadata.get(KEY_CHAT_TEMPLATE)
        if source is not None and source != "":
            template = cls(source, special)
            template.name = "file"
            return template
        architecture = model.metadata.get("general.architecture")
        fallback = fallback_template(architecture if isinstance(architecture, str) else None, tokenizer)
        template = cls(fallback.source, special)
        template.name = fallback.name
        return template

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        from jinja2.exceptions import SecurityError, TemplateError

        self._env.start()
        limit = self._env.limits.length
        try:
            pieces, length = [], 0
            for piece in self._template.generate(messages=messages, add_generation_prompt=add_generation_prompt,
                                                 **self.special_tokens):
                length += len(piece)
                if length > limit:
                    raise SecurityError(f"the template writes more than {limit} characters")
                pieces.append(piece)
            return "".join(pieces)
        except TemplateError as e:
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from e
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError, OverflowError,
                RecursionError, MemoryError) as e:
            raise ChatTemplateError(f"the chat template failed: {type(e).__name__}: {e}") from e

    @property
    def supports_system(self) -> bool:
        """Whether a system message survives rendering (it neither raises nor disappears)."""
        if self._supports_system is None:
            marker = "pyengine-system-probe-7f3a"
            try:
                text = self._render([{"role": "system", "content": marker}, {"role": "user", "content": "hi"}], True)
                self._supports_system = marker in text
            except ChatTemplateError:
                self._supports_system = False
        return self._supports_system

    def prepare(self, messages: list[dict]) -> list[dict]:
        """The messages as the template can take them: a leading system message merged into the first
        user message when the template has no system role."""
        if not messages or messages[0]["role"] != "system" or self.supports_system:
            return messages
        system, rest = messages[0]["content"], list(messages[1:])
        for i, m in enumerate(rest):
            if m["role"] == "user":
                rest[i] = {**m, "content": f"{system}\n\n{m['content']}" if system else m["content"]}
                return rest
        return [{"role": "user", "content": system}] + rest

    def render(self, messages, add_generation_prompt: bool = True) -> str:
        return self._render(self.prepare(check_messages(messages)), bool(add_generation_prompt))


def _tokenize_chat(model: Model, text: str) -> list[int]:
    tokenizer = model.tokenizer
    bos = tokenizer.bos_id
    add_bos = tokenizer.add_bos and bos is not None and not text.startswith(tokenizer.token_text(bos))
    return tokenizer.encode(text, add_bos=add_bos, parse_special=True)


def chat_ids(model: Model, messages, add_generation_prompt: bool = True,
             template: ChatTemplate | None = None) -> list[int]:
    """The token ids of the rendered conversation (apply_chat_template(tokenize=True))."""
    template = template or ChatTemplate.from_model(model)
    return _tokenize_chat(model, template.render(messages, add_generation_prompt))


def chat(model: Model, messages, max_tokens: int = 128, stream: bool = False, stop=(), draft=None,
         draft_max: int = DRAFT_MAX, **sampling):
    """The assistant's reply to `messages`, generated on a fresh context until an end-of-turn token.
    sampling: generate()'s keywords (temperature, top_k, seed, ...); draft, draft_max: generate()'s
    speculative decoding. Returns a Completion, or an iterator of text pieces with stream=True."""
    params = SamplingParams.from_options(sampling)
    check_options(model, params, max_tokens, stop, stream)
    check_draft(model, draft, draft_max)
    ids = chat_ids(model, messages)
    return generate_ids(model, ids, params, max_tokens, stop, stream, draft, draft_max)


class ChatSession:
    """A conversation held in one context, for the REPL. Each ask() renders the whole conversation
    with the template, keeps the longest prefix of ids the context already holds, evaluates only the
    rest, and streams the reply.

    When the rendered conversation plus room for the reply (min(max_tokens, n_ctx // 4) tokens)
    does not fit, the oldest turns are dropped (a system message stays) and `last_dropped` says how
    many. Counters of the last ask(): last_reused (ids kept from the context), last_prompt_eval (ids
    of the conversation evaluated), last_eval_count (everything evaluated: those and the reply's
    tokens), last_finish ("stop", "length", or "interrupted"). draft, draft_max: speculative decoding
    as in generate() (the drafter keeps to the conversation across turns)."""

    def __init__(self, model: Model, system: str | None = None, max_tokens: int = 512,
                 n_ctx: int | None = None, draft=None, draft_max: int = DRAFT_MAX, **sampling) -> None:
        self.model = model
        self.params = SamplingParams.from_options(sampling)
        self.sampler = Sampler(self.params, model.n_vocab)
        self.max_tokens = check_max_tokens(max_tokens)
        check_draft(model, draft, draft_max)
        if system is not None and not isinstance(system, str):
            raise ValueError(f"system must be a str, got {type(system).__name__}")
        self.system = system
        self.template = ChatTemplate.from_model(model)
        self.ctx = model.context(n_ctx)
        self.speculator = speculator(model, draft, draft_max, self.params, self.ctx.n_ctx)
        self.ctx_ids: list[int] = []  # what the context holds
        self.messages: list[dict] = []
        self._open: tuple[Iterator[str], TokenStream] | None = None  # the last reply, until it ends
        self.reset()

    def reset(self) -> None:
        """Forgets the conversation (the system prompt stays)."""
        self._end_open_reply()
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.ctx.truncate(0)
        self.ctx_ids = []
        self.last_reused = self.last_prompt_eval = self.last_eval_count = self.last_dropped = 0
        self.last_finish: str | None = None

    def _fit(self) -> list[int]:
        """Ids of the conversation with the generation prompt, dropping the oldest turns until they
        fit with room for the reply."""
        n_ctx = self.ctx.n_ctx
        room = max(1, min(self.max_tokens, n_ctx // 4))
        first = 1 if self.messages and self.messages[0]["role"] == "system" else 0
        ids = _tokenize_chat(self.model, self.template.render(self.messages, True))
        if len(ids) + room > n_ctx:
            alone = _tokenize_chat(self.model, self.template.render(self.messages[:first] + self.messages[-1:], True))
            if len(alone) >= n_ctx:
                raise ValueError(f"the message does not fit the context ({len(alone)} tokens, n_ctx {n_ctx})")
        dropped = 0
        while len(ids) + room > n_ctx:
            later = [i for i in range(first + 1, len(self.messages)) if self.messages[i]["role"] == "user"]
            if not later:  # only the newest user message is left: it fits, with less room
                break
            del self.messages[first:later[0]]  # the oldest turn: its user message and the replies
            dropped += 1
            ids = _tokenize_chat(self.model, self.template.render(self.messages, True))
        self.last_dropped = dropped
        return ids

    def ask(self, text: str) -> Iterator[str]:
        """Adds the user's message and returns an iterator of the reply's text pieces. The reply
        joins the conversation when the iterator ends, is closed, or is interrupted (the partial
        text, and the context truncated to what was evaluated)."""
        if not isinstance(text, str):
            raise ValueError(f"the message must be a str, got {type(text).__name__}")
        self._end_open_reply()
        message = {"role": "user", "content": text}
        self.messages.append(message)
        try:
            ids = self._fit()
        except BaseException:  # it does not fit, the template refuses the conversation, or Ctrl-C
            if self.messages and self.messages[-1] is message:
                self.messages.pop()
            raise
        reused = keep_prefix(self.ctx, reusable_prefix(self.ctx_ids, ids))
        self.ctx_ids = self.ctx_ids[:reused]
        self.last_reused, self.last_prompt_eval = reused, len(ids) - reused
        self.last_eval_count, self.last_finish = 0, None
        stream = TokenStream(self.ctx, ids[reused:], self.sampler, self.max_tokens, history=self.ctx_ids,
                             speculator=self.speculator)
        reply = self._reply(stream)
        self._open = (reply, stream)
        return reply

    def _end_open_reply(self) -> None:
        """Closes the last reply where its reader left it unfinished (the conversation goes on from
        what it had: a reply abandoned, not closed, must not join it later, when the iterator is
        collected, after newer turns)."""
        if self._open is not None:
            reply, stream = self._open
            reply.close()
            self._finish(stream)  # a reply never started: close() runs nothing; it joins, empty

    def _reply(self, stream: TokenStream) -> Iterator[str]:
        try:
            for _, piece in stream:
                if piece:
                    yield piece
        finally:
            self._finish(stream)

    def _finish(self, stream: TokenStream) -> None:
        if self._open is None or self._open[1] is not stream:
            return  # it has joined already
        self._open = None
        # Whatever happened (end, close(), KeyboardInterrupt), the context holds stream.ids.
        self.ctx.truncate(len(stream.ids))
        self.ctx_ids = stream.ids
        self.last_eval_count = stream.n_evaluated
        self.last_finish = stream.finish_reason or "interrupted"
        self.messages.append({"role": "assistant", "content": stream.text})
