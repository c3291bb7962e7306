//! `sys` layer of the model kernels in cuda/model/, exactly as declared
//! there. Every pointer is a device pointer of the current context; bf16
//! buffers are `void*` of raw bf16 bits. Return value as in [`super::ffi`]:
//! 0, a `cudaError_t` (> 0), or -1 for a rejected argument.

use super::ffi::Stream;
use std::ffi::{c_int, c_longlong, c_uint, c_void};

extern "C" {
    pub fn capmoe_model_embed(
        table: *const c_void,
        ids: *const c_uint,
        rows: c_int,
        vocab: c_int,
        hidden: c_int,
        out: *mut c_void,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_model_rmsnorm(
        x: *const c_void,
        w: *const f32,
        rows: c_int,
        cols: c_int,
        eps: f32,
        out: *mut c_void,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_model_rope(
        x: *mut c_void,
        positions: *const c_int,
        inv_freq: *const f32,
        rows: c_int,
        heads: c_int,
        half: c_int,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_model_add(
        x: *mut c_void,
        y: *const c_void,
        n: c_longlong,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_model_gather_rows(
        x: *const c_void,
        idx: *const c_uint,
        rows: c_int,
        src_rows: c_int,
        cols: c_int,
        out: *mut c_void,
        stream: Stream,
    ) -> c_int;

    pub fn capmoe_model_attention(
        q: *const c_void,
        k_cache: *const c_void,
        v_cache: *const c_void,
        n: c_int,
        len: c_int,
        heads: c_int,
        kv_heads: c_int,
        hd: c_int,
        window: c_int,
        scale: f32,
        out: *mut c_void,
        stream: Stream,
    ) -> c_int;
}
