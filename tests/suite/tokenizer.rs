//! The shipped CLIP tokenizer against transformers' ids (`tests/fixtures/tokenizer_cases.json`,
//! made by `scripts/fixtures/make_tokenizer.py`). dreamdist follows transformers'
//! `CLIPTokenizerFast`; where open_clip (ftfy + HTML unescaping) differs, the case records it and
//! this test checks that dreamdist still gives the fast ids, documenting the choice.
use dreamdist::tokenizer::{BOS, ClipTokenizer, EOS, MAX_LEN, PAD};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let v: Value = serde_json::from_str(include_str!("../fixtures/tokenizer_cases.json")).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn matches_transformers_fast_tokenizer_on_every_case() {
    let tok = ClipTokenizer::sd2().unwrap();
    let cases = cases();
    assert!(cases.len() >= 25, "expected the full case list");
    let mut differs_from_open_clip = 0;
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["fast"]);
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "prompt {text:?}");
        assert_eq!(got.len(), MAX_LEN);
        assert_eq!(got[0], BOS);
        if let Some(oc) = case.get("open_clip") {
            differs_from_open_clip += 1;
            assert_ne!(ids(oc), got, "{text:?} recorded as differing from open_clip");
        }
    }
    eprintln!("{} cases, {differs_from_open_clip} where open_clip differs", cases.len());
}

#[test]
fn padding_truncation_and_words() {
    let tok = ClipTokenizer::sd2().unwrap();
    let ids = tok.encode("a photo of a cat").unwrap();
    assert_eq!(&ids[..7], &[BOS, 320, 1125, 539, 320, 2368, EOS]);
    assert!(ids[7..].iter().all(|&i| i == PAD));
    let long = "a ".repeat(200);
    let ids = tok.encode(&long).unwrap();
    assert_eq!(ids.len(), MAX_LEN);
    assert_eq!(ids[MAX_LEN - 1], EOS);
    assert_eq!(tok.encode_words("").unwrap(), Vec::<u32>::new());
    assert_eq!(tok.encode_words("a photo").unwrap(), vec![320, 1125]);
}
