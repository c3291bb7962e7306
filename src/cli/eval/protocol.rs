//! The protocol of design.md §8, independent of the model: examples, the token stream, its
//! rows and batches, which examples are scored, and the scoring of one example.

use super::EvalError;
use serde::Deserialize;

/// One line of the eval data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Example {
    pub task: String,
    pub prompt: String,
    pub answer: String,
}

/// Parses JSONL: one `{"task","prompt","answer"}` object a line, blank lines skipped.
pub fn parse_examples(text: &str, source: &str) -> Result<Vec<Example>, EvalError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ex: Example = serde_json::from_str(line).map_err(|e| EvalError::BadLine {
            file: source.to_string(),
            line: n + 1,
            msg: e.to_string(),
        })?;
        if ex.prompt.is_empty() {
            // The first answer token is predicted from the prompt's last position.
            return Err(EvalError::BadLine {
                file: source.to_string(),
                line: n + 1,
                msg:
                    "empty prompt; the first answer token is scored from the prompt's last position"
                        .into(),
            });
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(EvalError::NoExamples {
            file: source.to_string(),
        });
    }
    Ok(out)
}

/// Where one example lies in the stream: `start..end`, its answer from `answer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub answer: usize,
    pub end: usize,
}

/// Every example's tokens, concatenated, and where each lies.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    pub ids: Vec<u32>,
    pub spans: Vec<Span>,
}

/// Tokenizes each `prompt + answer + "\n"` and concatenates them; the prompt's own tokens
/// must be a prefix of the example's (so the answer positions are well defined).
pub fn build_stream<E>(
    examples: &[Example],
    mut encode: impl FnMut(&str) -> Result<Vec<u32>, E>,
) -> Result<Stream, EvalError>
where
    EvalError: From<E>,
{
    let mut ids = Vec::new();
    let mut spans = Vec::with_capacity(examples.len());
    for (n, ex) in examples.iter().enumerate() {
        let p = encode(&ex.prompt)?;
        let full = encode(&format!("{}{}\n", ex.prompt, ex.answer))?;
        if full.len() <= p.len() || full[..p.len()] != p[..] {
            return Err(EvalError::NotPrefix { example: n + 1 });
        }
        let start = ids.len();
        ids.extend_from_slice(&full);
        spans.push(Span {
            start,
            answer: start + p.len(),
            end: ids.len(),
        });
    }
    Ok(Stream { ids, spans })
}

/// The most tokens one forward may hold.
pub const MAX_BATCH_TOKENS: usize = 1 << 16;

/// The stream cut into rows of `seq_len` and batches of `rows` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub rows: usize,
    pub seq_len: usize,
    /// Full batches (a final batch of fewer rows is dropped).
    pub batches: usize,
    /// Scored examples (indices into the stream's spans) per batch, in file order.
    pub scored: Vec<Vec<usize>>,
}

impl Layout {
    /// Tokens per forward, `rows * seq_len`.
    pub fn batch_tokens(&self) -> usize {
        self.rows * self.seq_len
    }
    /// Examples scored in all.
    pub fn scored_count(&self) -> usize {
        self.scored.iter().map(Vec::len).sum()
    }
}

/// Cuts `stream` into rows and batches and picks the scored examples: those whose tokens all
/// lie in one row of a full batch.
pub fn layout(stream: &Stream, rows: usize, seq_len: usize) -> Result<Layout, EvalError> {
    if rows == 0 || seq_len == 0 {
        return Err(EvalError::Shape(format!(
            "--rows {rows} and --seq-len {seq_len} must both be at least 1"
        )));
    }
    let per = rows
        .checked_mul(seq_len)
        .filter(|&t| t <= MAX_BATCH_TOKENS)
        .ok_or_else(|| {
            EvalError::Shape(format!(
                "--rows {rows} x --seq-len {seq_len} tokens per forward exceeds the limit of {MAX_BATCH_TOKENS}"
            ))
        })?;
    let batches = stream.ids.len() / per;
    if batches == 0 {
        return Err(EvalError::Shape(format!(
            "the data gives {} tokens, fewer than one forward of --rows {rows} x --seq-len {seq_len} = {per}; lower --rows or --seq-len, or give more examples",
            stream.ids.len()
        )));
    }
    let used = batches * per;
    let mut scored = vec![Vec::new(); batches];
    for (n, s) in stream.spans.iter().enumerate() {
        if s.end <= used && s.start / seq_len == (s.end - 1) / seq_len {
            scored[s.start / per].push(n);
        }
    }
    Ok(Layout {
        rows,
        seq_len,
        batches,
        scored,
    })
}

/// One example's score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// The argmax of the previous position's logits is the token, at every answer position.
    pub correct: bool,
    /// Sum of `-log p(token)` over the answer positions, nats.
    pub nll: f64,
    /// Answer positions (answer tokens and the closing newline).
    pub positions: usize,
}

/// Logit rows (into the batch) that predict `span`'s answer positions; `base` is the batch's
/// first stream position.
pub fn predicting_rows(span: Span, base: usize) -> std::ops::Range<usize> {
    span.answer - 1 - base..span.end - 1 - base
}

/// Scores one example from the batch's logits (`[tokens, vocab]`) and the stream.
pub fn score(logits: &[f32], vocab: usize, ids: &[u32], span: Span, base: usize) -> Score {
    let mut correct = true;
    let mut nll = 0.0;
    for r in predicting_rows(span, base) {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let target = ids[base + r + 1] as usize;
        correct &= capmoe::model::argmax(row) == Some(target);
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        nll += lse - row[target] as f64;
    }
    Score {
        correct,
        nll,
        positions: span.end - span.answer,
    }
}
