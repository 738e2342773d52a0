//! Gzip on the way through: plain bodies are compressed as they stream, gzip bodies are passed
//! through while a decoder beside them counts the uncompressed bytes and proves the stream whole.

use super::{DataError, DataSource};
use bytes::{Buf, Bytes};
use flate2::Compression;
use flate2::write::{GzEncoder, MultiGzDecoder};
use futures::{Stream, StreamExt};
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::time::Duration;

/// Output is handed on once this much has gathered (a backend gathers blocks of its own size).
const OUTPUT_CHUNK: usize = 256 * 1024;
/// A client that sends nothing for this long has gone away.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts what is written and keeps nothing.
#[derive(Default)]
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Mode {
    /// Plain data: compressed here (fast level: the cluster decompresses, the network is the cost).
    Compress(Option<GzEncoder<Vec<u8>>>),
    /// Already gzip: passed through; the decoder counts and checks.
    PassThrough(Option<MultiGzDecoder<Counter>>),
}

/// A request body as gzip chunks (see the module docs).
pub(crate) struct GzipBody<S> {
    input: S,
    mode: Mode,
    /// Bytes received from the client.
    received: u64,
    /// Uncompressed bytes.
    raw: u64,
    max: u64,
    /// The `Content-Length` of a body that arrives uncompressed.
    announced_raw: Option<u64>,
    done: bool,
}

impl<S, B> GzipBody<S>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf + Send,
{
    /// `gzip_input`: the body arrives gzip-compressed (`Content-Encoding: gzip`). `max` bounds the
    /// bytes received.
    pub(crate) fn new(input: S, gzip_input: bool, max: u64) -> Self {
        let mode = if gzip_input {
            Mode::PassThrough(Some(MultiGzDecoder::new(Counter::default())))
        } else {
            Mode::Compress(Some(GzEncoder::new(Vec::new(), Compression::fast())))
        };
        Self {
            input,
            mode,
            received: 0,
            raw: 0,
            max,
            announced_raw: None,
            done: false,
        }
    }

    /// The body's `Content-Length`, if the client sent one: its uncompressed size when it is not
    /// gzip-compressed.
    pub(crate) fn content_length(self, length: Option<u64>) -> Self {
        let announced_raw = match self.mode {
            Mode::Compress(_) => length,
            Mode::PassThrough(_) => None,
        };
        Self {
            announced_raw,
            ..self
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, DataError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let next = tokio::time::timeout(IDLE_TIMEOUT, self.input.next())
                .await
                .map_err(|_| {
                    DataError::Interrupted(format!("nothing came for {} s", IDLE_TIMEOUT.as_secs()))
                })?;
            let Some(chunk) = next else {
                return self.finish();
            };
            let mut chunk = chunk.map_err(|e| DataError::Interrupted(e.to_string()))?;
            let bytes = chunk.copy_to_bytes(chunk.remaining());
            self.received += bytes.len() as u64;
            if self.received > self.max {
                return Err(DataError::TooLarge { max: self.max });
            }
            if let Some(out) = self.feed(bytes)? {
                return Ok(Some(out));
            }
        }
    }

    /// Takes one input chunk; output once enough has gathered.
    fn feed(&mut self, bytes: Bytes) -> Result<Option<Bytes>, DataError> {
        match &mut self.mode {
            Mode::Compress(encoder) => {
                let encoder = encoder.as_mut().ok_or_else(finished)?;
                self.raw += bytes.len() as u64;
                encoder.write_all(&bytes).map_err(internal)?;
                let buffered = encoder.get_ref().len();
                Ok((buffered >= OUTPUT_CHUNK)
                    .then(|| Bytes::from(std::mem::take(encoder.get_mut()))))
            }
            Mode::PassThrough(decoder) => {
                let decoder = decoder.as_mut().ok_or_else(finished)?;
                decoder
                    .write_all(&bytes)
                    .map_err(|e| DataError::BadGzip(e.to_string()))?;
                self.raw = decoder.get_ref().0;
                Ok(Some(bytes))
            }
        }
    }

    /// The end of the body: the encoder's last bytes, or the proof the gzip input was whole.
    fn finish(&mut self) -> Result<Option<Bytes>, DataError> {
        self.done = true;
        let tail = match &mut self.mode {
            Mode::Compress(encoder) => {
                let encoder = encoder.take().ok_or_else(finished)?;
                Some(Bytes::from(encoder.finish().map_err(internal)?))
            }
            Mode::PassThrough(decoder) => {
                let decoder = decoder.take().ok_or_else(finished)?;
                if self.received == 0 {
                    return Err(DataError::Empty);
                }
                let counter = decoder
                    .finish()
                    .map_err(|e| DataError::BadGzip(e.to_string()))?;
                self.raw = counter.0;
                None
            }
        };
        if self.raw == 0 {
            return Err(DataError::Empty);
        }
        Ok(tail.filter(|t| !t.is_empty()))
    }
}

fn finished() -> DataError {
    DataError::Interrupted("the body was read past its end".to_owned())
}

fn internal(e: std::io::Error) -> DataError {
    DataError::Interrupted(format!("compressing failed: {e}"))
}

impl<S, B> DataSource for GzipBody<S>
where
    S: Stream<Item = Result<B, warp::Error>> + Send + Unpin,
    B: Buf + Send + 'static,
{
    fn next_chunk(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Bytes>, DataError>> + Send + '_>> {
        Box::pin(self.next())
    }

    fn raw_size(&self) -> u64 {
        self.raw
    }

    fn announced_raw_size(&self) -> Option<u64> {
        self.announced_raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::MultiGzDecoder as ReadDecoder;
    use std::io::Read;

    fn body(chunks: Vec<Vec<u8>>) -> impl Stream<Item = Result<Bytes, warp::Error>> + Send + Unpin {
        futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c))))
    }

    async fn drain<S: DataSource>(source: &mut S) -> Result<Vec<u8>, DataError> {
        let mut out = Vec::new();
        while let Some(chunk) = source.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ReadDecoder::new(bytes).read_to_end(&mut out).unwrap();
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[tokio::test]
    async fn plain_bodies_are_compressed_and_counted() {
        let data: Vec<u8> = (0..2_000_000u32)
            .flat_map(|i| format!("{i},x\n").into_bytes())
            .take(3_000_000)
            .collect();
        let chunks: Vec<Vec<u8>> = data.chunks(70_000).map(<[u8]>::to_vec).collect();
        let mut source = GzipBody::new(body(chunks), false, u64::MAX);
        let out = drain(&mut source).await.unwrap();
        assert_eq!(gunzip(&out), data);
        assert_eq!(source.raw_size(), data.len() as u64);
    }

    #[tokio::test]
    async fn gzip_bodies_pass_through_and_are_counted() {
        let data = b"a,b\n1,2\n".repeat(1000);
        let zipped = gzip(&data);
        let chunks: Vec<Vec<u8>> = zipped.chunks(100).map(<[u8]>::to_vec).collect();
        let mut source = GzipBody::new(body(chunks), true, u64::MAX);
        assert_eq!(drain(&mut source).await.unwrap(), zipped);
        assert_eq!(source.raw_size(), data.len() as u64);
    }

    #[tokio::test]
    async fn bad_input_is_refused() {
        let mut empty = GzipBody::new(body(vec![]), false, u64::MAX);
        assert_eq!(drain(&mut empty).await, Err(DataError::Empty));
        let mut empty_gzip = GzipBody::new(body(vec![]), true, u64::MAX);
        assert_eq!(drain(&mut empty_gzip).await, Err(DataError::Empty));
        let zipped = gzip(&b"x".repeat(10_000));
        let truncated = zipped[..zipped.len() / 2].to_vec();
        let mut cut = GzipBody::new(body(vec![truncated]), true, u64::MAX);
        assert!(matches!(drain(&mut cut).await, Err(DataError::BadGzip(_))));
        let mut not_gzip = GzipBody::new(body(vec![b"plain text".to_vec()]), true, u64::MAX);
        assert!(matches!(
            drain(&mut not_gzip).await,
            Err(DataError::BadGzip(_))
        ));
        let mut big = GzipBody::new(body(vec![vec![b'a'; 600], vec![b'a'; 600]]), false, 1000);
        assert_eq!(
            drain(&mut big).await,
            Err(DataError::TooLarge { max: 1000 })
        );
    }
}
