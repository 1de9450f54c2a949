//! The server's codec: prost, with small buffers.
//!
//! Tonic gives every call an encode buffer and a decode buffer of 8 KiB each by
//! default. Here both start empty and grow only while something is written or read;
//! the yield threshold bounds how much one response may gather in an encode buffer
//! before it is flushed. Subscribe and Listen responses skip the encode buffer
//! altogether (see [`super::streams`]); Listen's one request is decoded with
//! [`LeanDecoder`], Subscribe's frames by a decoder of their own (`inbound.rs`).

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

use crate::error::Error;

/// Bytes gathered in an encode buffer before it is handed to the connection.
const YIELD_THRESHOLD: usize = 4 * 1024;

/// A prost codec with empty initial buffers (named by `codec_path` in `build.rs`).
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = LeanDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(0, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        LeanDecoder::default()
    }
}

/// Prost's decoder, except that a message that does not decode (a string that is not
/// UTF-8, a truncated field) is the client's bad input — INVALID_ARGUMENT with
/// `ErrorInfo` like every other — where prost's codec answers INTERNAL.
#[derive(Debug)]
pub struct LeanDecoder<U>(ProstDecoder<U>);

impl<U> Default for LeanDecoder<U> {
    fn default() -> Self {
        LeanDecoder(ProstDecoder::new(BufferSettings::new(0, YIELD_THRESHOLD)))
    }
}

impl<U: Message + Default> Decoder for LeanDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|status| {
            Status::from(Error::invalid(
                "request",
                format!("is not a valid message: {}", status.message()),
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
