//! gRPC services and messages shared by the Cassette agent and coordinator.
//!
//! Generated code only: the `.proto` sources are in `proto/cassette/v1/`, compiled by `build.rs`
//! with a vendored `protoc`.
//!
//! # Layout
//! - [`v1`]: the `cassette.v1` package.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all, unreachable_pub, missing_debug_implementations)]

/// The `cassette.v1` package.
pub mod v1 {
    tonic::include_proto!("cassette.v1");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    #[test]
    fn messages_encode_and_decode() {
        let stats = super::v1::TransferStats { files_total: 3, bytes_transferred: 1 << 40, ..Default::default() };
        let bytes = stats.encode_to_vec();
        assert_eq!(super::v1::TransferStats::decode(&bytes[..]).unwrap(), stats);
    }
}
