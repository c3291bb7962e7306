//! The stream, row and scoring logic on hand-made cases.

use super::protocol::*;
use super::EvalError;

fn ex(prompt: &str, answer: &str) -> Example {
    Example {
        task: "t".into(),
        prompt: prompt.into(),
        answer: answer.into(),
    }
}

/// One token per byte.
fn bytes(s: &str) -> Result<Vec<u32>, EvalError> {
    Ok(s.bytes().map(u32::from).collect())
}

#[test]
fn stream_concatenates_examples_with_a_closing_newline() {
    let s = build_stream(&[ex("ab", "c"), ex("d", "ef")], bytes).unwrap();
    assert_eq!(s.ids, bytes("abc\ndef\n").unwrap());
    assert_eq!(
        s.spans,
        vec![
            Span {
                start: 0,
                answer: 2,
                end: 4
            },
            Span {
                start: 4,
                answer: 5,
                end: 8
            }
        ]
    );
}

#[test]
fn an_example_straddling_a_row_boundary_is_not_scored() {
    let s = build_stream(
        &[ex("ab", "c"), ex("d", "e"), ex("f", "g"), ex("h", "i")],
        bytes,
    )
    .unwrap();
    let l = layout(&s, 1, 4).unwrap();
    // 12 tokens: three rows of one batch each; example 1 is 4..7, example 2 is 7..10 (crosses 8),
    // example 3 is 10..13 (past the used 12 tokens).
    assert_eq!(l.batches, 3);
    assert_eq!(l.scored, vec![vec![0], vec![1], vec![]]);
}

#[test]
fn the_final_partial_batch_is_dropped() {
    let exs: Vec<Example> = (0..5).map(|_| ex("a", "b")).collect(); // 3 tokens each, 15 in all
    let s = build_stream(&exs, bytes).unwrap();
    // Rows of 3, 2 rows a batch: 5 rows, 2 full batches, the fifth row dropped.
    let l = layout(&s, 2, 3).unwrap();
    assert_eq!(l.batches, 2);
    assert_eq!(l.scored, vec![vec![0, 1], vec![2, 3]]);
    assert_eq!(l.scored_count(), 4);
}

#[test]
fn too_little_data_and_bad_shapes_are_errors() {
    let s = build_stream(&[ex("a", "b")], bytes).unwrap();
    assert!(matches!(layout(&s, 2, 3), Err(EvalError::Shape(_))));
    assert!(matches!(layout(&s, 0, 3), Err(EvalError::Shape(_))));
    assert!(matches!(
        layout(&s, usize::MAX, 2),
        Err(EvalError::Shape(_))
    ));
}

#[test]
fn scoring_is_exact_on_hand_made_logits() {
    // Stream "ab\n" as ids 0, 1, 2 with the answer "b" and the newline: rows 0 and 1 predict.
    let ids = [0u32, 1, 2];
    let span = Span {
        start: 0,
        answer: 1,
        end: 3,
    };
    let vocab = 3;
    // Row 0 prefers 1 (right), row 1 prefers 2 (right), row 2 is never read.
    let good = [0.0f32, 2.0, 0.0, 0.0, 0.0, 1.0, 9.0, 9.0, 9.0];
    let s = score(&good, vocab, &ids, span, 0);
    assert!(s.correct);
    assert_eq!(s.positions, 2);
    let lse = |r: &[f64]| r.iter().map(|x| x.exp()).sum::<f64>().ln();
    let want = (lse(&[0.0, 2.0, 0.0]) - 2.0) + (lse(&[0.0, 0.0, 1.0]) - 1.0);
    assert!((s.nll - want).abs() < 1e-12);
    // A tie at row 1 goes to the lower id (0), which is wrong.
    let tie = [0.0f32, 2.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0];
    assert!(!score(&tie, vocab, &ids, span, 0).correct);
    // The same example in a later batch: rows are relative to the batch's base.
    let ids2 = [7u32, 7, 7, 0, 1, 2];
    let span2 = Span {
        start: 3,
        answer: 4,
        end: 6,
    };
    assert!(score(&good, vocab, &ids2, span2, 3).correct);
}

#[test]
fn bad_lines_name_the_line() {
    let e = parse_examples(
        "{\"task\":\"a\",\"prompt\":\"x\",\"answer\":\"y\"}\n{\"task\":1}\n",
        "f",
    )
    .unwrap_err();
    assert!(matches!(e, EvalError::BadLine { line: 2, .. }), "{e}");
    assert!(matches!(
        parse_examples("\n\n", "f"),
        Err(EvalError::NoExamples { .. })
    ));
    let e = parse_examples("{\"task\":\"a\",\"prompt\":\"\",\"answer\":\"y\"}", "f").unwrap_err();
    assert!(e.to_string().contains("empty prompt"), "{e}");
}

#[test]
fn a_prompt_that_is_not_a_prefix_is_an_error() {
    // A tokenizer that merges the prompt's last character with the answer's first.
    let merge = |s: &str| -> Result<Vec<u32>, EvalError> {
        Ok(if s.starts_with("ab") {
            vec![9, 2]
        } else {
            vec![1]
        })
    };
    let e = build_stream(&[ex("a", "b")], merge).unwrap_err();
    assert!(matches!(e, EvalError::NotPrefix { example: 1 }));
}
