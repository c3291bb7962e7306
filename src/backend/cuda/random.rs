//! The CUDA backend's device-side random weights and event timing: what
//! the model's `ModelBackend` (random models) and `ep::EpBackend` (timing) use.

use super::moe::CudaExperts;
use super::tensor::CudaMat;
use super::{shape_err, CudaBackend};
use crate::backend::{name_seed32, BackendError, ExpertsShape, RandomInit};
use crate::cuda::{ExpertFfn, FfnShape, GpuError};
use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;

impl CudaBackend {
    /// Drawn on the device in bf16 with the hashed uniform init
    /// (`launch::fill_hash_bf16`, `U(-std sqrt 3, std sqrt 3)`, seeded by the
    /// name and the seed): not the CPU backend's values (see
    /// `backend::random`), and no host copy, so that a full Mixtral-8x7B
    /// (~94 GB in bf16) can be drawn on one GPU.
    pub(crate) fn random_mat_device(
        &self,
        name: &str,
        shape: [usize; 2],
        init: &RandomInit,
    ) -> Result<CudaMat, BackendError> {
        let [out, inp] = shape;
        let n = out * inp;
        if n == 0 {
            return Err(shape_err(
                "matrix weight (2-D, non-empty)",
                shape.to_vec(),
                vec![0, 0],
            ));
        }
        if n as u64 > u64::from(u32::MAX) {
            return Err(GpuError::TooLarge {
                what: "elements of a random matrix (the hashed init indexes with 32 bits)",
                value: n,
            }
            .into());
        }
        let st = self.gpu.stream();
        let data =
            crate::cuda::hashed_bf16(st, n, name_seed32(init.seed, name), init.bound() as f32)?;
        Ok(CudaMat { data, out, inp })
    }

    /// Experts drawn on the device, each from the seed and its own name
    /// (`ExpertFfn::random_by_expert`), so that an EP rank's group holds the
    /// whole layer's values for its experts; not the CPU backend's values.
    pub(crate) fn random_experts_device(
        &self,
        layer: usize,
        shape: ExpertsShape,
        name: &dyn Fn(usize, &str) -> String,
        init: &RandomInit,
    ) -> Result<CudaExperts, BackendError> {
        let _ = layer;
        let ffn_shape = FfnShape::new(shape.experts, shape.hidden, shape.intermediate)
            .map_err(GpuError::from)?;
        let seeds: Vec<u32> = (0..shape.experts)
            .map(|j| name_seed32(init.seed, &name(j, "w13")))
            .collect();
        let ffn = ExpertFfn::random_by_expert(&self.gpu, ffn_shape, &seeds, init.bound() as f32)?;
        Ok(CudaExperts::new(ffn))
    }

    /// CUDA events around what `f` queues on the backend's stream, after a
    /// sync so that earlier work is not counted; host work inside `f` that
    /// leaves the GPU idle is counted (the end event is queued after it).
    pub(crate) fn timed_events<T, E: From<BackendError>>(
        &self,
        f: impl FnOnce() -> Result<T, E>,
    ) -> Result<(T, f64), E> {
        let ev = |e: cudarc::driver::DriverError| E::from(BackendError::from(e));
        let st = self.gpu.stream();
        st.synchronize().map_err(ev)?;
        let start = st.record_event(Some(CU_EVENT_DEFAULT)).map_err(ev)?;
        let v = f()?;
        let end = st.record_event(Some(CU_EVENT_DEFAULT)).map_err(ev)?;
        end.synchronize().map_err(ev)?;
        let ms = start.elapsed_ms(&end).map_err(ev)?;
        Ok((v, f64::from(ms)))
    }
}
