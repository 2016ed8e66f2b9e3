//! Parity with jiwer 4 (WER/CER and S/D/I/H counts) and with OpenAI Whisper's text normalisers,
//! on the values `scripts/jiwer_reference.py` computed with the Python originals.

use std::collections::BTreeMap;

use serde_json::Value;
use whisper_moe::eval::normalize::{basic, basic_remove_diacritics, english};
use whisper_moe::eval::wer::{Stats, by_group, char_stats, word_stats};
use whisper_moe::eval::{Normalizer, Score, wer};

fn load(name: &str) -> Value {
    let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// Compare our counts with jiwer's `{rate, substitutions, deletions, insertions, hits}`.
fn check(what: &str, ours: &Stats, jiwer: &Value) -> Result<(), String> {
    let n = |k: &str| jiwer[k].as_u64().unwrap();
    let theirs = (n("substitutions"), n("deletions"), n("insertions"), n("hits"));
    let mine = (ours.substitutions, ours.deletions, ours.insertions, ours.hits);
    let rate = jiwer["rate"].as_f64().unwrap();
    if mine != theirs || (ours.error_rate() - rate).abs() > 1e-9 || ours.words != theirs.0 + theirs.1 + theirs.3 {
        return Err(format!(
            "{what}: ours S/D/I/H {mine:?} rate {} (N {}), jiwer {theirs:?} rate {rate}",
            ours.error_rate(),
            ours.words
        ));
    }
    Ok(())
}

#[test]
fn wer_and_cer_equal_jiwer() {
    let data = load("jiwer_pairs.json");
    let pairs = data["pairs"].as_array().unwrap();
    assert!(pairs.len() >= 50, "only {} pairs", pairs.len());
    let mut failures = Vec::new();
    let mut raw_total = Score::default();
    let mut basic_total = Score::default();
    let mut grouped = Vec::new();
    for p in pairs {
        let (r, h) = (p["reference"].as_str().unwrap(), p["hypothesis"].as_str().unwrap());
        let tag = format!("{r:?} / {h:?}");

        let raw = Score { words: word_stats(r, h), chars: char_stats(r, h) };
        failures.extend(check(&format!("raw words {tag}"), &raw.words, &p["raw"]["words"]).err());
        failures.extend(check(&format!("raw chars {tag}"), &raw.chars, &p["raw"]["chars"]).err());
        raw_total += raw;
        assert!((wer::wer(r, h) - raw.wer()).abs() < 1e-15 && (wer::cer(r, h) - raw.cer()).abs() < 1e-15);

        let b = &p["basic"];
        let (nr, nh) = (basic(r), basic(h));
        if nr != b["reference"].as_str().unwrap() || nh != b["hypothesis"].as_str().unwrap() {
            failures.push(format!(
                "basic normaliser {tag}: ours {nr:?} / {nh:?}, Whisper {} / {}",
                b["reference"], b["hypothesis"]
            ));
        }
        let s = wer::score(Normalizer::Basic, r, h);
        failures.extend(check(&format!("basic words {tag}"), &s.words, &b["words"]).err());
        failures.extend(check(&format!("basic chars {tag}"), &s.chars, &b["chars"]).err());
        basic_total += s;
        grouped.push((p["group"].as_str().unwrap().to_string(), s));
    }

    for (name, total) in [("raw", raw_total), ("basic", basic_total)] {
        let c = &data["corpus"][name];
        failures.extend(check(&format!("corpus {name} words"), &total.words, &c["words"]).err());
        failures.extend(check(&format!("corpus {name} chars"), &total.chars, &c["chars"]).err());
    }
    let texts: Vec<(&str, &str)> =
        pairs.iter().map(|p| (p["reference"].as_str().unwrap(), p["hypothesis"].as_str().unwrap())).collect();
    assert_eq!(wer::corpus(Normalizer::Basic, texts.iter().copied()), basic_total);
    assert_eq!(wer::corpus(Normalizer::None, texts.iter().copied()), raw_total);

    let groups: BTreeMap<String, Score> = by_group(grouped);
    let expected = data["groups_basic"].as_object().unwrap();
    assert_eq!(groups.len(), expected.len());
    for (g, s) in &groups {
        failures.extend(check(&format!("group {g} words"), &s.words, &expected[g]["words"]).err());
        failures.extend(check(&format!("group {g} chars"), &s.chars, &expected[g]["chars"]).err());
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn normalizers_equal_whisper() {
    let data = load("normalizer_cases.json");
    let mut failures = Vec::new();
    for c in data["cases"].as_array().unwrap() {
        let t = c["text"].as_str().unwrap();
        for (name, ours) in [("basic", basic(t)), ("english", english(t))] {
            let theirs = c[name].as_str().unwrap();
            if ours != theirs {
                failures.push(format!("{name} {t:?}: ours {ours:?}, Whisper {theirs:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// BasicTextNormalizer on non-English text (German, French, Spanish, Greek, CJK, Thai, Devanagari,
/// Arabic, Cyrillic, ... and odd whitespace), with and without remove_diacritics, as
/// transformers computes it (tests/data/basic_normalizer_cases.json; Python keeps a space at
/// either end that we trim).
#[test]
fn basic_normalizer_equals_whisper_on_other_languages() {
    let data = load("basic_normalizer_cases.json");
    let cases = data["cases"].as_array().unwrap();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for c in cases {
        let t = c["text"].as_str().unwrap();
        for (name, ours) in [("basic", basic(t)), ("basic_remove_diacritics", basic_remove_diacritics(t))] {
            let theirs = c[name].as_str().unwrap().trim();
            if ours != theirs {
                failures.push(format!("{name} {t:?}: ours {ours:?}, Whisper {theirs:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}
