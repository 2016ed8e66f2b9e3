"""Writes tests/data/large_v3/reference.json: what a large-v3 checkpoint's front end and
tokenizer must give, from the Python references (tests/large_v3.rs compares with them).

- features: transformers' WhisperFeatureExtractor(feature_size=128) (large-v3's
  preprocessor_config.json) on two clips of data/multilingual: the first 40 frames of every
  bin and every bin's mean over the 3000 frames.
- tokens: openai-whisper's tokenizer with num_languages=100 (what large-v3 uses): special
  token ids, prompts, and the BPE ids of a sentence.

Needs transformers, numpy, soundfile, tiktoken and openai-whisper's tokenizer.py with its
assets (OPENAI_WHISPER_SRC: the `whisper` directory of the openai-whisper sdist from PyPI; only
tokenizer.py and assets/ are used, imported as a standalone module so that torch/numba are not).
Run: scripts/large_v3_reference.sh
"""
import importlib.util
import json
import os
import sys

import numpy as np
import soundfile as sf
from transformers import WhisperFeatureExtractor

CLIPS = ["data/multilingual/train/audio/de/de_seen_00.flac", "data/multilingual/train/audio/en_us/en_us_seen_00.flac"]
FRAMES = 40


def openai_tokenizer(src):
    spec = importlib.util.spec_from_file_location("owtok", os.path.join(src, "tokenizer.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["owtok"] = mod
    spec.loader.exec_module(mod)
    return mod


def main():
    fe = WhisperFeatureExtractor(feature_size=128)
    features = []
    for path in CLIPS:
        audio, sr = sf.read(path, dtype="float32")
        assert sr == 16000, path
        f = fe(audio, sampling_rate=16000, return_tensors="np").input_features[0]  # [128, 3000]
        features.append({
            "clip": path,
            "first_frames": f[:, :FRAMES].astype(np.float64).tolist(),
            "bin_means": f.astype(np.float64).mean(axis=1).tolist(),
        })

    t = openai_tokenizer(os.environ["OPENAI_WHISPER_SRC"])
    tok = t.get_tokenizer(multilingual=True, num_languages=100, language="yue", task="transcribe")
    de = t.get_tokenizer(multilingual=True, num_languages=100, language="de", task="translate")
    sentence = " Guten Tag, wie geht es dir?"
    tokens = {
        "n_vocab": tok.encoding.n_vocab,
        "eot": tok.eot,
        "sot": tok.sot,
        "no_timestamps": tok.no_timestamps,
        "timestamp_begin": tok.timestamp_begin,
        "languages": len(tok.all_language_codes),
        "prompt_yue_transcribe": list(tok.sot_sequence) + [tok.no_timestamps],
        "prompt_de_translate": list(de.sot_sequence) + [de.no_timestamps],
        "sentence": sentence,
        "sentence_ids": tok.encode(sentence),
    }
    out = {"feature_size": 128, "frames": FRAMES, "features": features, "tokens": tokens}
    with open("tests/data/large_v3/reference.json", "w") as fh:
        json.dump(out, fh)
        fh.write("\n")
    print("wrote tests/data/large_v3/reference.json", tokens)


if __name__ == "__main__":
    main()
