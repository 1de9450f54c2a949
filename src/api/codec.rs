//! The server's codec: prost, with small buffers.
//!
//! Tonic gives every call an encode buffer and a decode buffer of 8 KiB each by
//! default. Here both start empty and grow only while something is written or read;
//! the yield threshold bounds how much one response may gather in an encode buffer
//! before it is flushed. Subscribe responses skip the encode buffer altogether (see
//! [`super::subscribe`]); its requests are decoded with this codec's decoder.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

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
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(0, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(0, YIELD_THRESHOLD))
    }
}
