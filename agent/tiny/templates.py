"""Chat templates for the tiny checkpoints, following the real models' templates."""


def _template(parts: str, preamble: str = "") -> str:
    """The Qwen chat skeleton (a default system turn, ``<|im_start|>role``) around the
    family's rendering of content parts."""
    return (
        preamble
        + "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
        "{% else %}{% for content in message['content'] %}"
        + parts
        + "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
        "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


QWEN2_VL = _template(
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
)

QWEN2_AUDIO = _template(
    "{% if content['type'] == 'audio' %}{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n",
    preamble="{% set audio_count = namespace(value=0) %}",
)

QWEN2_5_OMNI = _template(
    "{% if content['type'] == 'image' %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'video' %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif content['type'] == 'audio' %}<|audio_bos|><|AUDIO|><|audio_eos|>"
)

_QWEN3_VL_STRIPPED = (
    # Qwen3-VL-*-Instruct's chat_template.jinja without its tool-calling branches: a system
    # turn only when given, the vision placeholders, assistant text. (Jinja's ``{%-`` eats the
    # newline before it, so this renders without the real template's newlines; the tiny
    # Qwen3-Omni and MiniCPM-V 4.6 templates are built on it.)
    "{%- if messages[0].role == 'system' %}<|im_start|>system\n"
    "{%- if messages[0].content is string %}{{- messages[0].content }}{%- else %}"
    "{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}<|im_end|>\n{%- endif %}"
    "{%- set image_count = namespace(value=0) %}{%- set video_count = namespace(value=0) %}"
    "{%- for message in messages %}{%- if message.role == 'user' or message.role == 'assistant' %}"
    "<|im_start|>{{ message.role }}\n"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "{%- set image_count.value = image_count.value + 1 %}"
    "{%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif content.type == 'video' or 'video' in content %}"
    "{%- set video_count.value = video_count.value + 1 %}"
    "{%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}{%- endfor %}{%- endif %}"
    "<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)

# Qwen3-VL-*-Instruct's chat template as published, tool branches included (``tools`` in
# the system turn, ``<tool_call>`` in assistant turns, ``<tool_response>`` for tool messages).
# Taken from two public copies that agree byte for byte (5292 bytes, SHA-256
# 3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4): a test in
# zhongkaifu/TensorSharp that pins it as the template of Qwen/Qwen3-VL-8B-Instruct-GGUF, and a
# training script's copy of Qwen3-VL's chat_template. Without tools it renders what the
# stripped template above renders, plus the newlines that one loses.
QWEN3_VL = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501  (the published text, byte for byte)

QWEN3_OMNI = _QWEN3_VL_STRIPPED.replace(
    # Qwen3-Omni-*-Instruct: the Qwen3-VL placeholders plus audio.
    "{%- elif 'text' in content %}",
    "{%- elif content.type == 'audio' or 'audio' in content %}"
    "<|audio_start|><|audio_pad|><|audio_end|>{%- elif 'text' in content %}")

QWEN3_ASR = (
    # Qwen3-ASR's chat_template.jinja: a system turn (the context, possibly empty), then the
    # user's audio placeholder; the user's text is not rendered.
    "<|im_start|>system\n{%- for message in messages %}{%- if message.role == 'system' %}"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for c in message.content %}{%- if 'text' in c %}{{- c.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}{%- endif %}{%- endfor %}<|im_end|>\n"
    "{%- for message in messages %}{%- if message.role == 'user' %}<|im_start|>user\n"
    "{%- if message.content is not string %}{%- for c in message.content %}"
    "{%- if c.type == 'audio' or 'audio' in c %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{%- endif %}{%- endfor %}{%- endif %}<|im_end|>\n"
    "{%- elif message.role == 'assistant' %}<|im_start|>assistant\n"
    "{%- if message.content is string %}{{- message.content }}{%- else %}"
    "{%- for c in message.content %}{%- if 'text' in c %}{{- c.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)

LLAVA_ONEVISION = (
    # llava-onevision-qwen2-*-ov-hf: ChatML, media placeholders first in the turn, then text.
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "<image>\n{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "<video>\n{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

MINICPM_V4_6 = (
    # MiniCPM-V 4.6 (Qwen3.5 ChatML): each image / video part is one <|image_pad|> /
    # <|video_pad|> that the processor expands into its <image>/<slice> layout.
    _QWEN3_VL_STRIPPED.replace("<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>")
    .replace("<|vision_start|><|video_pad|><|vision_end|>", "<|video_pad|>")
)

# MiniCPM-V 2.6 / MiniCPM-o 2.6 tokenizers: ChatML over string contents (their chat() turns
# images and audio into placeholders first), a default system turn when none is given.
MINICPM = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

JOYCAPTION = (
    # llama-joycaption-*-hf-llava: Llama 3.1 over plain-string contents (``content.replace``
    # fails on a list); the template itself puts the image token, between two reserved tokens,
    # in front of the first user turn, and writes the BOS its tokenizer also adds.
    "{{ bos_token }}{% set ns = namespace(image=false) %}{% for message in messages %}"
    "{% set content = message['content'].replace('<image>', '') | trim %}"
    "{% if message['role'] == 'user' and not ns.image %}"
    "{% set content = '<|reserved_special_token_70|><|reserved_special_token_69|>"
    "<|reserved_special_token_71|>' + content %}{% set ns.image = true %}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + content"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
