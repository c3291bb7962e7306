//! Validated router logits `[T, E]`, row-major f32.

use super::error::{RoutingError, MAX_EXPERTS};

/// A borrowed, validated `[tokens, experts]` matrix of router logits.
///
/// ```
/// use capmoe::routing::Logits;
/// let l = Logits::new(&[0.0, 1.0, 2.0, 3.0], 2, 2).unwrap();
/// assert_eq!(l.row(1), &[2.0, 3.0]);
/// assert!(Logits::new(&[0.0, f32::NAN], 1, 2).is_err());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Logits<'a> {
    data: &'a [f32],
    tokens: usize,
    experts: usize,
}

impl<'a> Logits<'a> {
    /// Checks the shape (`data.len() == tokens * experts`, `1 <= experts <= 512`)
    /// and that every value is finite. `tokens == 0` is a valid empty batch.
    pub fn new(data: &'a [f32], tokens: usize, experts: usize) -> Result<Self, RoutingError> {
        if experts == 0 {
            return Err(RoutingError::NoExperts);
        }
        if experts > MAX_EXPERTS {
            return Err(RoutingError::TooManyExperts { experts });
        }
        if tokens.checked_mul(experts) != Some(data.len()) {
            return Err(RoutingError::LogitsLength {
                len: data.len(),
                tokens,
                experts,
            });
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(RoutingError::NonFiniteLogit {
                token: i / experts,
                expert: i % experts,
                value: data[i],
            });
        }
        Ok(Self {
            data,
            tokens,
            experts,
        })
    }

    /// Tokens `T` (rows).
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Experts `E` (columns).
    pub fn experts(&self) -> usize {
        self.experts
    }

    /// All logits, row-major `[T, E]`.
    pub fn data(&self) -> &'a [f32] {
        self.data
    }

    /// Token `t`'s logits, `E` values (`t < T`).
    pub fn row(&self, t: usize) -> &'a [f32] {
        &self.data[t * self.experts..(t + 1) * self.experts]
    }
}
