//! The expert FFN's shape, shared by the CPU twin and the GPU FFN.

use super::ExpertError;

/// `experts` SwiGLU experts of hidden size `hidden` and intermediate size
/// `intermediate`. Build it with [`FfnShape::new`], which checks what the
/// grouped GEMMs need (both sizes positive multiples of 8: 16-byte aligned
/// bf16 rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FfnShape {
    /// Experts (E), at least 1.
    pub experts: usize,
    /// Hidden size (H), a positive multiple of 8.
    pub hidden: usize,
    /// Intermediate size (I), a positive multiple of 8.
    pub intermediate: usize,
}

impl FfnShape {
    /// A checked shape.
    ///
    /// ```
    /// use capmoe::expert::FfnShape;
    /// let s = FfnShape::new(8, 4096, 14336).unwrap();
    /// assert_eq!(s.w13_len(), 8 * 2 * 14336 * 4096);
    /// assert!(FfnShape::new(8, 4100, 14336).is_err());
    /// ```
    pub fn new(experts: usize, hidden: usize, intermediate: usize) -> Result<Self, ExpertError> {
        let s = Self {
            experts,
            hidden,
            intermediate,
        };
        s.check()?;
        Ok(s)
    }

    /// Checks a shape built field by field.
    pub fn check(&self) -> Result<(), ExpertError> {
        if self.experts == 0 {
            return Err(ExpertError::NoExperts);
        }
        for (what, value) in [
            ("hidden size", self.hidden),
            ("intermediate size", self.intermediate),
        ] {
            if value == 0 || value % 8 != 0 {
                return Err(ExpertError::NotMultipleOf8 { what, value });
            }
        }
        Ok(())
    }

    /// Elements of the interleaved `W13 [E, 2I, H]`.
    pub fn w13_len(&self) -> usize {
        self.experts * 2 * self.intermediate * self.hidden
    }

    /// Elements of `W2 [E, H, I]`.
    pub fn w2_len(&self) -> usize {
        self.experts * self.hidden * self.intermediate
    }

    /// Floating-point operations of `rows` routed rows:
    /// `2 rows H 2I` (GEMM1) + `2 rows I H` (GEMM2).
    pub fn flops(&self, rows: usize) -> f64 {
        let (r, h, i) = (rows as f64, self.hidden as f64, self.intermediate as f64);
        2.0 * r * h * 2.0 * i + 2.0 * r * i * h
    }

    /// Bytes of bf16 weights `active_experts` experts read: `3 H I` each.
    pub fn weight_bytes(&self, active_experts: usize) -> f64 {
        active_experts as f64 * 3.0 * self.hidden as f64 * self.intermediate as f64 * 2.0
    }
}
