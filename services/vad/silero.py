"""Silero VAD v6 on onnxruntime, streamed one 512-sample window at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

SAMPLE_RATE = 16000
WINDOW = 512  # 32 ms at 16 kHz, the size the model was trained on
CONTEXT = 64  # the v5/v6 models look at the tail of the previous window
WINDOW_MS = WINDOW * 1000 / SAMPLE_RATE


def bundled_model_path() -> Path:
    import faster_whisper

    return Path(faster_whisper.__file__).parent / "assets" / "silero_vad_v6.onnx"


class SileroModel:
    """One ONNX session shared by every stream of the process."""

    def __init__(self, path: str | None = None) -> None:
        opts = onnxruntime.SessionOptions()
        # Windows are tiny: threads cost more than they give.
        opts.inter_op_num_threads = 1
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 4
        self.session = onnxruntime.InferenceSession(
            str(path or bundled_model_path()), providers=["CPUExecutionProvider"], sess_options=opts
        )

    def stream(self) -> SileroStream:
        return SileroStream(self)


class SileroStream:
    """The recurrent state of one audio stream. Not thread-safe; one caller."""

    def __init__(self, model: SileroModel) -> None:
        self.model = model
        self.h = np.zeros((1, 1, 128), dtype=np.float32)
        self.c = np.zeros((1, 1, 128), dtype=np.float32)
        self.context = np.zeros(CONTEXT, dtype=np.float32)
        self.pending = np.zeros(0, dtype=np.float32)

    def push(self, pcm16: bytes) -> list[tuple[float, float]]:
        """Feed audio; returns (speech probability, rms dBFS) per complete window."""
        samples = np.frombuffer(pcm16, dtype="<i2").astype(np.float32) / 32768.0
        self.pending = np.concatenate([self.pending, samples])
        out: list[tuple[float, float]] = []
        while len(self.pending) >= WINDOW:
            window, self.pending = self.pending[:WINDOW], self.pending[WINDOW:]
            batch = np.concatenate([self.context, window])[None, :]
            probs, self.h, self.c = self.model.session.run(
                None, {"input": batch, "h": self.h, "c": self.c}
            )
            self.context = window[-CONTEXT:]
            rms = float(np.sqrt(np.mean(window * window)) + 1e-9)
            out.append((float(np.asarray(probs).reshape(-1)[0]), 20.0 * np.log10(rms)))
        return out
