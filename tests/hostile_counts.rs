//! Huge counts: errors before anything is allocated, never a wrap.

use capmoe::model::MixtralConfig;
use capmoe::trace::{check_trace_shape, synthetic_logits, Skew, TraceError, MAX_TRACE_VALUES};
use capmoe::RoutingError;

#[test]
fn trace_tokens_times_experts_cannot_wrap_or_abort() {
    // 2^61 x 8 = 2^64 wraps to 0: it used to write a 128-byte file
    // claiming 2^61 rows.
    for (t, e) in [
        (1usize << 61, 8),
        (1_000_000_000_000, 8),
        (usize::MAX, 512),
        (MAX_TRACE_VALUES + 1, 1),
    ] {
        let err = synthetic_logits(t, e, 1, Skew::Uniform, 0).unwrap_err();
        assert_eq!(
            err,
            TraceError::TooLarge {
                tokens: t,
                experts: e
            }
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&t.to_string()) && msg.contains(&MAX_TRACE_VALUES.to_string()),
            "{msg}"
        );
    }
    check_trace_shape(MAX_TRACE_VALUES / 8, 8, 2).unwrap();
}

#[test]
fn zero_experts_says_so_not_that_a_skew_is_out_of_range() {
    let err = synthetic_logits(16, 0, 2, Skew::Mixtral, 0).unwrap_err();
    assert_eq!(err, TraceError::Routing(RoutingError::NoExperts));
    assert!(err.to_string().contains("number of experts is 0"), "{err}");
    let err = synthetic_logits(0, 8, 2, Skew::Mixtral, 0).unwrap_err();
    assert!(err.to_string().contains("expected tokens >= 1"), "{err}");
}

#[test]
fn parameter_counts_are_checked() {
    let mut c = MixtralConfig::builtin("mixtral-8x7b").unwrap();
    assert_eq!(c.checked_param_count(), Some(c.param_count()));
    // Out of the validated bounds, a product that overflows is None.
    c.num_hidden_layers = usize::MAX;
    assert!(c.validate().is_err());
    assert_eq!(c.checked_param_count(), None);
    assert_eq!(c.param_count(), u64::MAX);
}
