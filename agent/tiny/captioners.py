"""Tiny checkpoints of the captioning guide's models: BLIP-2, Florence-2, PaliGemma (no chat
template: prompt-style) and a JoyCaption-style LLaVA (a Llama 3.1 template over plain strings).

Real classes, configs laid out as the published ones (BLIP-2's OPT stops at the newline, its
processor puts ``num_query_tokens`` image tokens before the BOS; Florence-2 is a BART
encoder-decoder whose processor turns task tokens into words and post-processes the output;
PaliGemma's processor adds the image tokens, BOS and newline; JoyCaption's tokenizer adds a BOS
that its template also writes), with small towers and vocabularies."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from agent.tiny import templates
from agent.tiny.build import TOKENIZER, _hub_layout

SIGLIP = dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14)
"""A SigLIP tower: 56-pixel pictures in 14-pixel patches, 16 image tokens."""


def _bpe() -> tuple[dict[str, int], Any]:
    """The repository's byte-level BPE (the scheme of OPT's, BART's and Llama 3's): its vocab
    and merges (pairs; the tokenizer classes take them though typed as strings)."""
    data = json.loads(TOKENIZER.read_text())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" "))
              for m in data["model"]["merges"]]
    return dict(data["model"]["vocab"]), merges


def _save(model: Any, processor: Any, out: Path, **generation: Any) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(**generation)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def blip2(out: Path) -> None:
    """Blip2ForConditionalGeneration on OPT (Salesforce/blip2-opt-*): GPT-2 BPE with ``</s>``
    as BOS (added to every text), ``<image>`` added by the processor, the newline as EOS."""
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
        GPT2Tokenizer,
    )

    vocab, merges = _bpe()
    tok = GPT2Tokenizer(vocab=vocab, merges=merges, bos_token="</s>", eos_token="</s>",
                        unk_token="</s>", pad_token="<pad>", add_bos_token=True)
    processor = Blip2Processor(image_processor=BlipImageProcessor(
        size={"height": 56, "width": 56}), tokenizer=tok, num_query_tokens=8)
    ids_of: Any = tok.convert_tokens_to_ids
    newline, image = ids_of("Ċ"), ids_of("<image>")
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=newline,
               pad_token_id=tok.pad_token_id)
    text = dict(model_type="opt", vocab_size=len(tok), hidden_size=128, ffn_dim=256,
                num_hidden_layers=2, num_attention_heads=4, word_embed_proj_dim=128,
                max_position_embeddings=512, prefix="</s>", **ids)
    config = Blip2Config(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=2, image_size=56, patch_size=14),
        qformer_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=2, encoder_hidden_size=64,
                            vocab_size=len(tok)),
        text_config=text, num_query_tokens=8,
        image_token_index=image)
    _save(Blip2ForConditionalGeneration(config), processor, out, **ids)


FLORENCE_PARSING = {
    # florence-community/Florence-2-*'s post_processor_config
    "ocr": {"PATTERN": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>"
                       r"<loc_(\d+)><loc_(\d+)><loc_(\d+)>", "AREA_THRESHOLD": 0.0},
    "phrase_grounding": {"FILTER_BY_BLACK_LIST": True}, "pure_text": {},
    "description_with_bboxes": {}, "description_with_polygons": {}, "polygons": {},
    "bboxes": {}, "description_with_bboxes_or_polygons": {}}


def florence2(out: Path) -> None:
    """Florence2ForConditionalGeneration (native in transformers 5): a DaViT tower, a BART
    encoder-decoder; BART's special tokens and ``<loc_*>`` tokens, ``<image>`` as the
    tokenizer's image token; 64-pixel pictures, 1 + 2x2 image tokens."""
    from transformers import (
        BartTokenizer,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )

    bpe, merges = _bpe()
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update((k, len(vocab)) for k in bpe if k not in vocab)
    tok = BartTokenizer(vocab=vocab, merges=merges,
                        extra_special_tokens={"image_token": "<image>"})
    tok.add_tokens([f"<loc_{i}>" for i in range(1000)])
    image = CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False,
                               crop_size={"height": 64, "width": 64}, image_seq_length=5,
                               image_mean=[0.485, 0.456, 0.406],
                               image_std=[0.229, 0.224, 0.225], resample=3)
    processor = Florence2Processor(image_processor=image, tokenizer=tok,
                                   post_processor_config=FLORENCE_PARSING)
    ids = dict(bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
               forced_bos_token_id=0)
    text = dict(model_type="bart", vocab_size=len(tok), d_model=128, encoder_layers=1,
                decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
                encoder_ffn_dim=256, decoder_ffn_dim=256, max_position_embeddings=1024, **ids)
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[32, 32, 64, 64], num_heads=[1, 1, 2, 2],
                  num_groups=[1, 1, 2, 2], window_size=2, projection_dim=128)
    # untied (the real ones tie their embeddings): tied random weights only repeat "<s>"
    config = Florence2Config(text_config=text, vision_config=vision,
                             image_token_id=tok.image_token_id, tie_word_embeddings=False)
    _save(Florence2ForConditionalGeneration(config), processor, out, **ids)


def _gemma_tokenizer() -> Any:
    """Gemma's layout: ``<pad> <eos> <bos> <unk>`` first, byte fallback, ``▁`` for spaces and
    a literal newline token (vLLM's PaliGemma looks it up)."""
    from transformers import GemmaTokenizer

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    vocab.update((f"<0x{b:02X}>", 5 + b) for b in range(256))
    for piece in ["\n", "▁", *string.ascii_letters, *string.digits, *string.punctuation]:
        vocab.setdefault(piece, len(vocab))
    for word in ["en", "▁en", "ap", "cap", "oc", "ocr"]:
        vocab.setdefault(word, len(vocab))
    merges: Any = [("e", "n"), ("▁", "en"), ("a", "p"), ("c", "ap"), ("o", "c"), ("oc", "r")]
    return GemmaTokenizer(vocab=vocab, merges=merges)


def paligemma(out: Path) -> None:
    """PaliGemmaForConditionalGeneration (google/paligemma-3b-*): SigLIP, Gemma; the processor
    adds ``<image>`` and the ``<loc>``/``<seg>`` tokens and turns the tokenizer's BOS off (it
    writes the BOS itself)."""
    from transformers import (
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessor,
    )

    tok = _gemma_tokenizer()
    processor = PaliGemmaProcessor(image_processor=SiglipImageProcessor(
        size={"height": 56, "width": 56}, image_seq_length=16), tokenizer=tok)
    ids = dict(bos_token_id=2, eos_token_id=1, pad_token_id=0)
    text = dict(model_type="gemma", vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1, head_dim=32,
                **ids)
    config = PaliGemmaConfig(text_config=text, vision_config=dict(SIGLIP, vision_use_head=False),
                             image_token_index=processor.image_token_id, projection_dim=128)
    _save(PaliGemmaForConditionalGeneration(config), processor, out, **ids)
    _hub_layout(out / "model.safetensors", "vision_tower.", "vision_tower.vision_model.")


LLAMA3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
          "<|eot_id|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_69|>",
          "<|reserved_special_token_70|>", "<|reserved_special_token_71|>"]


def _llama3_tokenizer() -> Any:
    """Llama 3.1's special tokens on the byte-level BPE; like Llama 3's, it adds
    ``<|begin_of_text|>`` to every text."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer.from_file(str(TOKENIZER))
    raw.add_special_tokens(LLAMA3)
    bos = "<|begin_of_text|>"
    raw.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, raw.token_to_id(bos))])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=bos, eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>",
                                   chat_template=templates.JOYCAPTION)


def joycaption(out: Path) -> None:
    """A JoyCaption-style LlavaForConditionalGeneration (fancyfeast/llama-joycaption-*-hf-llava):
    SigLIP, Llama 3.1, ``<|reserved_special_token_69|>`` as the image token, the features of
    the tower's second-to-last layer, all of them."""
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessor,
    )

    tok = _llama3_tokenizer()
    image_token = "<|reserved_special_token_69|>"
    processor = LlavaProcessor(image_processor=SiglipImageProcessor(
        size={"height": 56, "width": 56}), tokenizer=tok, patch_size=14,
        vision_feature_select_strategy="full", image_token=image_token,
        num_additional_image_tokens=0, chat_template=templates.JOYCAPTION)
    stop = [tok.convert_tokens_to_ids("<|eot_id|>"), tok.convert_tokens_to_ids("<|end_of_text|>")]
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=stop, pad_token_id=tok.pad_token_id)
    text = dict(model_type="llama", vocab_size=len(tok), hidden_size=128, intermediate_size=256,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                max_position_embeddings=4096, **ids)
    config = LlavaConfig(text_config=text, vision_config=SIGLIP,
                         image_token_index=tok.convert_tokens_to_ids(image_token),
                         vision_feature_layer=-2, vision_feature_select_strategy="full",
                         image_seq_length=16)
    _save(LlavaForConditionalGeneration(config), processor, out, **ids)
    _hub_layout(out / "model.safetensors", "vision_tower.", "vision_tower.vision_model.")
