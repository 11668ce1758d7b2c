//! The proto -> domain conversions of `baton-grpc` on any bytes a client can send.
//!
//! The first byte picks the message (`ServiceSpec`, `ServiceRequirements`, `Goal`, an
//! execution state or a definition format); the rest is decoded as it. Beyond not panicking:
//! what converts converts back to the same proto-level meaning (domain -> proto -> domain is
//! the identity, compared by `Debug` so that a NaN that slipped through shows as a difference
//! rather than hiding in `PartialEq`), and accepted requirements validate without panicking.

#![no_main]

use baton_grpc::{convert, pb};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else { return };
    match kind % 5 {
        0 => {
            let Ok(message) = pb::ServiceSpec::decode(bytes) else { return };
            let Ok(spec) = convert::spec_from_proto(message) else { return };
            let again = convert::spec_from_proto(convert::spec_to_proto(&spec))
                .unwrap_or_else(|e| panic!("{spec:?} converts but its proto does not: {e}"));
            assert_eq!(format!("{again:?}"), format!("{spec:?}"));
            assert!(spec.qos().latency_p50_ms.is_finite() && spec.qos().availability.is_finite(), "{spec:?}");
        }
        1 => {
            let Ok(message) = pb::ServiceRequirements::decode(bytes) else { return };
            let Ok(requirements) = convert::requirements_from_proto(message) else { return };
            let _ = requirements.validate();
            let again = convert::requirements_from_proto(convert::requirements_to_proto(&requirements))
                .unwrap_or_else(|e| panic!("{requirements:?} converts but its proto does not: {e}"));
            assert_eq!(format!("{again:?}"), format!("{requirements:?}"));
        }
        2 => {
            let Ok(message) = pb::Goal::decode(bytes) else { return };
            let Ok(goal) = convert::goal_from_proto(message) else { return };
            let again = convert::goal_from_proto(convert::goal_to_proto(&goal))
                .unwrap_or_else(|e| panic!("{goal:?} converts but its proto does not: {e}"));
            assert_eq!(format!("{again:?}"), format!("{goal:?}"));
        }
        3 => {
            let Some(value) = bytes.first_chunk::<4>().map(|b| i32::from_le_bytes(*b)) else { return };
            if let Ok(state) = convert::execution_state_from_proto("state", value) {
                assert_eq!(convert::execution_state_to_proto(state) as i32, value);
            }
        }
        _ => {
            let Some(value) = bytes.first_chunk::<4>().map(|b| i32::from_le_bytes(*b)) else { return };
            if let Ok(format) = convert::definition_format_from_proto("format", value) {
                assert_eq!(convert::definition_format_to_proto(format) as i32, value);
            }
        }
    }
});
