//! Framing shared by both ends of a client connection: length-delimited bincode with a frame
//! limit.

/// Largest frame on a client connection: a maximal batch plus envelope.
pub const CLIENT_FRAME_BYTES_MAX: usize = 80 << 20;

/// A length-delimited codec with [`CLIENT_FRAME_BYTES_MAX`].
pub fn codec() -> tarpc::tokio_util::codec::LengthDelimitedCodec {
    tarpc::tokio_util::codec::LengthDelimitedCodec::builder()
        .max_frame_length(CLIENT_FRAME_BYTES_MAX)
        .new_codec()
}
