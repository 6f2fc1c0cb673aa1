"""Tiny random chat models for tests and demos: a real transformers architecture, a byte-level BPE
tokenizer trained on the spot, and Qwen2.5's ChatML template. Built offline on CPU in a few seconds.

The output is gibberish by design. What matters is that the model exercises the same code paths as a
real one: GQA (so a KV-cache bug shows), a context small enough to overflow in tests, and logits
"peaky" enough that greedy decoding does not flip on float rounding when a request is batched
differently.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
from typing import Literal

Arch = Literal["qwen2", "llama"]
ARCHES: tuple[str, ...] = ("qwen2", "llama")

# Marker written next to the weights so `build_tiny_model` knows it may overwrite a directory.
MARKER_FILE = "swiftops_tiny_model.json"

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)
# Qwen2.5 has these as added but not special tokens: they survive skip_special_tokens.
ADDED_TOKENS = ("<tool_call>", "</tool_call>")
DEFAULT_SYSTEM = "You are a helpful assistant."

VOCAB_SIZE_TARGET = 1536
MODEL_SHAPE = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
)
# A random model with the usual 0.02 init gives nearly flat logits, so greedy picks flip on rounding
# when the batch layout changes. A large init makes the top-1 logit stand clear of the rest.
INITIALIZER_RANGE = 1.0
# lm_head rows of special tokens are shrunk so greedy outputs rarely stop early or emit template
# tokens, yet EOS stays reachable (tests want long outputs, and some that stop).
EOS_ROW_SCALE = 0.9
OTHER_SPECIAL_ROW_SCALE = 0.2

# Same behaviour as Qwen2.5-Instruct's template, with the system default from the Qwen2 family.
CHAT_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- '" + DEFAULT_SYSTEM + "' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Qwen2's pre-tokenizer split: digits one by one, words with their leading space, punctuation runs.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TRAINING_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Large language models generate text one token at a time. Each new token attends to all the tokens before it,
so the server keeps a cache of keys and values for every running request. When many users send requests at
the same time, the scheduler batches them together and the GPU stays busy. Streaming returns each token as soon
as it is ready, which makes a chat interface feel fast even when the whole answer takes several seconds.
Please summarize the following article in three sentences. What is the capital of France? The capital of France
is Paris. How many days are there in a week? There are seven days in a week: Monday, Tuesday, Wednesday,
Thursday, Friday, Saturday and Sunday. The weather today is sunny with a light breeze from the west.
I would like to book a table for two people at seven o'clock tonight. Thank you very much for your help!
She said that they'll arrive soon, but we're not sure when. It's a beautiful day, isn't it? Let's go outside.
Deploy the model on Kubernetes with two GPUs, set the memory limit, and expose an OpenAI compatible endpoint.
The adapter was trained with LoRA on a small dataset of SQL questions and answers.
人工智能正在改变我们的生活和工作方式。大型语言模型可以回答问题、写文章、翻译文本和编写代码。
今天天气很好，我们一起去公园散步吧。请用中文回答下面的问题。北京是中国的首都，上海是一个国际化的大城市。
你好，我是一个有用的助手。有什么可以帮你的吗？这个模型支持流式输出、批量推理和多个适配器。
部署服务的时候，需要设置端口、模型路径和最大上下文长度。谢谢你的帮助！我们明天见。
数学题：小明有五个苹果，给了小红两个，还剩几个？答案是三个。
def fibonacci(n: int) -> list[int]:
    \"\"\"Return the first n Fibonacci numbers.\"\"\"
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]

class Scheduler:
    def __init__(self, max_batch_size: int = 32) -> None:
        self.waiting = []
        self.running = []
        self.max_batch_size = max_batch_size

    def schedule(self):
        while self.waiting and len(self.running) < self.max_batch_size:
            self.running.append(self.waiting.pop(0))
        return self.running

for i in range(10):
    print(f"step {i}: loss={0.5 / (i + 1):.4f}")
if __name__ == "__main__":
    import json
    print(json.dumps({"name": "get_weather", "arguments": {"city": "Beijing", "unit": "celsius"}}))
SELECT name, COUNT(*) AS total FROM orders WHERE price > 100 GROUP BY name ORDER BY total DESC LIMIT 10;
curl http://localhost:8000/v1/chat/completions -H "Content-Type: application/json" -d '{"model": "qwen"}'
0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 3.14159 2.71828 -17 +3 1e-5 99% $19.99 2026-11-25 12:30:45
1234567890 9876543210 0x1F 0b1010 #ff8800 (1 + 2) * 3 = 9; 7 / 2 = 3.5; 2 ** 10 = 1024; x <= y && y >= z
"""


def train_tokenizer():
    """Byte-level BPE over the full 256-byte alphabet, so any NFC-normalised UTF-8 text round-trips."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(byte_fallback=False))
    # NFC like Qwen2.5's tokenizer.json; transformers' Qwen2Tokenizer (which AutoTokenizer picks for a
    # qwen2 config) adds it anyway, so both archs tokenize identically.
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE_TARGET,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator(TRAINING_CORPUS.splitlines(keepends=True), trainer=trainer)
    # Like Qwen: special tokens come after the BPE vocabulary. <|im_start|> is special but not a BOS
    # (nothing is prepended to prompts); <tool_call> tags are added tokens that are not special.
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.add_tokens(list(ADDED_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        additional_special_tokens=[BOS_TOKEN],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model_config(arch: Arch, tokenizer):
    """Small but real: GQA (4 query heads share 2 KV heads) so a KV-cache indexing bug shows."""
    from transformers import LlamaConfig, Qwen2Config

    config_class = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    # Untied embeddings so the lm_head rows of special tokens can be scaled on their own.
    return config_class(
        vocab_size=len(tokenizer),
        **MODEL_SHAPE,
        initializer_range=INITIALIZER_RANGE,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        dtype="float32",
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def init_model(config, tokenizer, seed: int):
    """Random weights from `seed` (CPU RNG: byte-identical for a given torch version), special rows scaled down."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    other_special_ids = [
        tokenizer.convert_tokens_to_ids(token) for token in (*SPECIAL_TOKENS, *ADDED_TOKENS) if token != EOS_TOKEN
    ]
    with torch.no_grad():
        lm_head = model.get_output_embeddings().weight  # [vocab, hidden]
        lm_head[other_special_ids] *= OTHER_SPECIAL_ROW_SCALE
        lm_head[tokenizer.eos_token_id] *= EOS_ROW_SCALE
    return model.eval()


def is_tiny_model_dir(path: pathlib.Path) -> bool:
    return (path / MARKER_FILE).is_file()


def build_tiny_model(out_dir: str | pathlib.Path, arch: Arch = "qwen2", seed: int = 0) -> pathlib.Path:
    """Write a tiny random chat model to `out_dir` and return its path.

    The directory loads offline with `AutoModelForCausalLM` / `AutoTokenizer.from_pretrained`. The same
    `seed` gives byte-identical weights. An existing tiny model in `out_dir` is overwritten; any other
    non-empty directory is refused.
    """
    from swiftops.protocol.errors import ConfigError

    if arch not in ARCHES:
        raise ConfigError(f"unknown tiny-model arch {arch!r}; choose one of: {', '.join(ARCHES)}")
    out = pathlib.Path(out_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; pass a new or empty directory")
    if out.is_dir() and any(out.iterdir()) and not is_tiny_model_dir(out):
        raise ConfigError(f"{out} is not empty and does not hold a tiny model; pass a new or empty directory")
    out.mkdir(parents=True, exist_ok=True)
    # The marker goes first so that a build interrupted half-way can be rerun over the same directory.
    (out / MARKER_FILE).write_text(json.dumps({"arch": arch, "seed": seed}, indent=2) + "\n")

    tokenizer = train_tokenizer()
    config = build_model_config(arch, tokenizer)
    model = init_model(config, tokenizer, seed)
    model.generation_config = build_generation_config(config)
    with progress_bars_off():
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@contextlib.contextmanager
def progress_bars_off():
    """transformers shows a "Writing model shards" bar even for one 1 MB file; it is noise in the CLI."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def build_generation_config(config):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=False,
    )
