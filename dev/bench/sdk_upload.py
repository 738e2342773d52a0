"""One upload through the official Python SDK, timed: the SDK side of the bench's data-upload cells.

    sdk_upload.py --dm-url URL --token-file PATH --chunk-file PATH --size BYTES
                  --database DB --table TABLE

Ingests SIZE bytes of CSV with QueuedIngestClient.ingest_from_stream (is_compressed=False, so the
SDK gzips it and uploads it to a TempStorage container, then queues the message), the body being
CHUNK-FILE's bytes repeated (the same bytes the bench posts to the handler), produced on demand by
a file-like object. Prints one JSON line: seconds (ingest_from_stream alone), bytes, source_id,
peak RSS (ru_maxrss, KiB) and the same before the upload (interpreter + imports + client).
The SDK reads the whole stream into memory and gzips it into a BytesIO before uploading
(StreamDescriptor.compress_stream), so its peak grows with the body whatever the stream.
Run by `cargo run --release -p kusto-dev --bin bench -- --upload` from its virtualenv.
"""

import argparse
import importlib.metadata
import io
import platform
import json
import resource
import sys
import time

from azure.kusto.data import KustoConnectionStringBuilder
from azure.kusto.data.data_format import DataFormat
from azure.kusto.ingest import IngestionProperties, QueuedIngestClient, StreamDescriptor


class RepeatedChunk(io.RawIOBase):
    """`size` bytes: `chunk` repeated (the last copy cut short), generated as they are read."""

    def __init__(self, chunk: bytes, size: int):
        self._chunk = chunk
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self._size - self._pos)
        done = 0
        while done < n:
            off = (self._pos + done) % len(self._chunk)
            take = min(n - done, len(self._chunk) - off)
            buf[done : done + take] = self._chunk[off : off + take]
            done += take
        self._pos += n
        return n


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dm-url", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--chunk-file", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--table", required=True)
    a = p.parse_args()

    with open(a.token_file) as f:
        token = f.read().strip()
    with open(a.chunk_file, "rb") as f:
        chunk = f.read()
    kcsb = KustoConnectionStringBuilder.with_token_provider(a.dm_url, lambda: token)
    client = QueuedIngestClient(kcsb)
    props = IngestionProperties(database=a.database, table=a.table, data_format=DataFormat.CSV)
    stream = io.BufferedReader(RepeatedChunk(chunk, a.size), buffer_size=1 << 20)
    descriptor = StreamDescriptor(stream, is_compressed=False, size=a.size)

    # Interpreter, imports, client: the process's footprint before the upload.
    base_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = client.ingest_from_stream(descriptor, props)
    seconds = time.perf_counter() - started
    client.close()

    print(
        json.dumps(
            {
                "seconds": seconds,
                "bytes": a.size,
                "source_id": str(result.source_id),
                "status": str(result.status),
                "blob": (result.blob_uri or "").split("?")[0],
                # Linux: KiB.
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "base_rss_kib": base_rss_kib,
                "sdk_version": importlib.metadata.version("azure-kusto-ingest"),
                "python": platform.python_version(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
