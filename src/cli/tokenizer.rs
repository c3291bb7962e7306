//! A checkpoint's `tokenizer.json` (Hugging Face `tokenizers`, loaded from the file alone, no
//! network), for `--prompt` and `capmoe eval`.

use std::path::{Path, PathBuf};
use thiserror::Error;
use tokenizers::{ModelWrapper, Tokenizer};

/// What loading or using a tokenizer can fail with.
#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("no tokenizer.json in {}: text input needs the checkpoint's Hugging Face tokenizer.json (or give token ids with --ids)", .dir.display())]
    Missing { dir: PathBuf },
    #[error("cannot load {}: {msg}; expected a Hugging Face tokenizer.json", .path.display())]
    Load { path: PathBuf, msg: String },
    #[error("cannot tokenize {text:?}: {msg}")]
    Encode { text: String, msg: String },
    #[error("{text:?} has characters the tokenizer does not know (they become the unknown token {unk:?}); expected text in the tokenizer's vocabulary")]
    Unknown { text: String, unk: String },
    #[error("{text:?} gives token id {id}, outside the model's vocabulary (vocab_size {vocab}); the tokenizer does not belong to this model")]
    OutOfVocab { text: String, id: u32, vocab: usize },
    #[error("cannot decode ids: {msg}")]
    Decode { msg: String },
}

/// A tokenizer checked against the model's vocabulary size.
pub struct Tok {
    inner: Tokenizer,
    unk: Option<(u32, String)>,
    vocab: usize,
}

/// At most 60 characters of `s`, for error messages.
fn short(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if s.chars().count() > 60 {
        out.push('…');
    }
    out
}

impl Tok {
    /// Loads `dir/tokenizer.json` for a model of `vocab` token ids.
    pub fn load(dir: &Path, vocab: usize) -> Result<Self, TokenizerError> {
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Err(TokenizerError::Missing {
                dir: dir.to_path_buf(),
            });
        }
        let inner = Tokenizer::from_file(&path).map_err(|e| TokenizerError::Load {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let unk_name = match inner.get_model() {
            ModelWrapper::BPE(m) => m.get_unk_token().clone(),
            ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
            ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
            ModelWrapper::Unigram(_) => None,
        };
        let unk = unk_name.and_then(|n: String| inner.token_to_id(&n).map(|id| (id, n)));
        Ok(Self { inner, unk, vocab })
    }

    /// Token ids of `text` (special tokens as the tokenizer's post-processor adds them);
    /// unknown characters and ids past the vocabulary are errors.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| TokenizerError::Encode {
                text: short(text),
                msg: e.to_string(),
            })?;
        let ids = enc.get_ids().to_vec();
        if let Some((unk, name)) = &self.unk {
            if ids.contains(unk) && !text.contains(name.as_str()) {
                return Err(TokenizerError::Unknown {
                    text: short(text),
                    unk: name.clone(),
                });
            }
        }
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab) {
            return Err(TokenizerError::OutOfVocab {
                text: short(text),
                id,
                vocab: self.vocab,
            });
        }
        Ok(ids)
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Decode { msg: e.to_string() })
    }
}
