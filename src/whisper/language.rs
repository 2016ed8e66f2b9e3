//! Whisper's languages: the codes behind its `<|xx|>` tokens, their names, and what datasets
//! write instead (locales such as `pt-BR`, names such as `German`, aliases such as `castilian`).

use anyhow::{Result, bail};

/// Code and name of every language token, in token order (transformers'
/// `tokenization_whisper.LANGUAGES`; `yue` exists only in large-v3's tokenizer).
#[rustfmt::skip]
pub const LANGUAGES: [(&str, &str); 100] = [
    ("en", "english"), ("zh", "chinese"), ("de", "german"), ("es", "spanish"), ("ru", "russian"),
    ("ko", "korean"), ("fr", "french"), ("ja", "japanese"), ("pt", "portuguese"), ("tr", "turkish"),
    ("pl", "polish"), ("ca", "catalan"), ("nl", "dutch"), ("ar", "arabic"), ("sv", "swedish"),
    ("it", "italian"), ("id", "indonesian"), ("hi", "hindi"), ("fi", "finnish"), ("vi", "vietnamese"),
    ("he", "hebrew"), ("uk", "ukrainian"), ("el", "greek"), ("ms", "malay"), ("cs", "czech"),
    ("ro", "romanian"), ("da", "danish"), ("hu", "hungarian"), ("ta", "tamil"), ("no", "norwegian"),
    ("th", "thai"), ("ur", "urdu"), ("hr", "croatian"), ("bg", "bulgarian"), ("lt", "lithuanian"),
    ("la", "latin"), ("mi", "maori"), ("ml", "malayalam"), ("cy", "welsh"), ("sk", "slovak"), ("te", "telugu"),
    ("fa", "persian"), ("lv", "latvian"), ("bn", "bengali"), ("sr", "serbian"), ("az", "azerbaijani"),
    ("sl", "slovenian"), ("kn", "kannada"), ("et", "estonian"), ("mk", "macedonian"), ("br", "breton"),
    ("eu", "basque"), ("is", "icelandic"), ("hy", "armenian"), ("ne", "nepali"), ("mn", "mongolian"),
    ("bs", "bosnian"), ("kk", "kazakh"), ("sq", "albanian"), ("sw", "swahili"), ("gl", "galician"),
    ("mr", "marathi"), ("pa", "punjabi"), ("si", "sinhala"), ("km", "khmer"), ("sn", "shona"), ("yo", "yoruba"),
    ("so", "somali"), ("af", "afrikaans"), ("oc", "occitan"), ("ka", "georgian"), ("be", "belarusian"),
    ("tg", "tajik"), ("sd", "sindhi"), ("gu", "gujarati"), ("am", "amharic"), ("yi", "yiddish"), ("lo", "lao"),
    ("uz", "uzbek"), ("fo", "faroese"), ("ht", "haitian creole"), ("ps", "pashto"), ("tk", "turkmen"),
    ("nn", "nynorsk"), ("mt", "maltese"), ("sa", "sanskrit"), ("lb", "luxembourgish"), ("my", "myanmar"),
    ("bo", "tibetan"), ("tl", "tagalog"), ("mg", "malagasy"), ("as", "assamese"), ("tt", "tatar"),
    ("haw", "hawaiian"), ("ln", "lingala"), ("ha", "hausa"), ("ba", "bashkir"), ("jw", "javanese"),
    ("su", "sundanese"), ("yue", "cantonese"),
];

/// Other names transformers accepts (`TO_LANGUAGE_CODE`) and ISO codes Whisper spells otherwise.
#[rustfmt::skip]
const ALIASES: [(&str, &str); 15] = [
    ("burmese", "my"), ("valencian", "ca"), ("flemish", "nl"), ("haitian", "ht"), ("letzeburgesch", "lb"),
    ("pushto", "ps"), ("panjabi", "pa"), ("moldavian", "ro"), ("moldovan", "ro"), ("sinhalese", "si"),
    ("castilian", "es"), ("mandarin", "zh"), ("jv", "jw"), ("iw", "he"), ("nb", "no"),
];

/// Whisper's code for what a dataset or a user wrote: a code (`de`), a token (`<|de|>`), a
/// name (`German`), an alias (`castilian`) or a locale (`pt-BR`, `zh_CN`, `sv-SE`).
pub fn code(s: &str) -> Result<String> {
    let t = s.trim().trim_start_matches("<|").trim_end_matches("|>").to_lowercase();
    let find = |t: &str| -> Option<&'static str> {
        LANGUAGES
            .iter()
            .find(|(c, n)| *c == t || *n == t)
            .map(|(c, _)| *c)
            .or_else(|| ALIASES.iter().find(|(a, _)| *a == t).map(|(_, c)| *c))
    };
    if let Some(c) = find(&t) {
        return Ok(c.to_string());
    }
    // A locale: the language subtag before the region or script.
    if let Some((base, _)) = t.split_once(['-', '_'])
        && let Some(c) = find(base)
    {
        return Ok(c.to_string());
    }
    bail!(
        "`{s}` is not a language Whisper knows (a code such as `de`, a name such as `german`, or a locale such as `pt-BR`)"
    )
}

/// Languages written without spaces between words, where WER means little and CER is the
/// headline (openai-whisper's evaluation splits these into characters).
pub fn without_spaces(code: &str) -> bool {
    matches!(code, "zh" | "ja" | "th" | "lo" | "my" | "km" | "bo" | "yue")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_names_locales_and_aliases() {
        for (input, want) in [
            ("de", "de"),
            ("<|de|>", "de"),
            ("German", "de"),
            ("pt-BR", "pt"),
            ("zh_CN", "zh"),
            ("sv-SE", "sv"),
            ("castilian", "es"),
            ("Haitian Creole", "ht"),
            ("jv", "jw"),
            ("yue", "yue"),
        ] {
            assert_eq!(code(input).unwrap(), want, "{input}");
        }
        let e = code("klingon").unwrap_err().to_string();
        assert!(e.contains("klingon"), "{e}");
        assert!(code("xx-YY").is_err());
        // token order: en is 50259 in every multilingual tokenizer, su the 99th.
        assert_eq!(LANGUAGES[0].0, "en");
        assert_eq!(LANGUAGES[98].0, "su");
    }
}
