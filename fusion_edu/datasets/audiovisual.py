"""Audio-visual clips for MBT (notebook 06): which way does the object we hear move?

Each clip has **frames** — ``num_frames`` grey 32x32 images of two objects (``OBJECTS``: a bright
and a dim blob) moving steadily in two different directions (``MOTIONS``; the one we do not hear
is the distractor motion; ``distractor_brightness`` adds a third, jittering blob) — and **audio**
— half a second at 8 kHz of the voice of one of the two objects (``SOUNDS``: the bright blob's
low tone or the dim blob's high tone), over background noise and a distractor tone burst pitched
between the two voices.  The label is the direction of the object we hear (4 classes).  It needs
both modalities *bound together*: the frames show two directions but not which object sounds (at
best 1/2), the audio which object sounds but not where it goes (1/4) — and averaging a frames-only
and an audio-only prediction (late fusion) cannot do better than the frames alone.

The audio goes through the real front end of audio transformers (AST, MBT): a short-time Fourier
transform (``torch.stft``, Hann window), the power spectrum, a triangular **mel filterbank**, and
the log — a ``(1, n_mels, time)`` log-mel spectrogram, normalised by fixed constants.

Some clips lose a modality (``MISSING``): **dark** ones (the frames hold only noise) and **silent**
ones (the audio holds only background noise), ``missing_share`` of each in every split.  Their label
is kept: a model can only guess the lost half, which is what the notebook measures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .cache import cached_split

__all__ = [
    "AUDIOVISUAL_SPLIT_SIZES",
    "MISSING",
    "MOTIONS",
    "OBJECTS",
    "SOUNDS",
    "AudioVisualConfig",
    "generate_audiovisual_clips",
    "load_audiovisual_clips",
    "log_mel_spectrogram",
    "mel_filterbank",
    "validate_audiovisual",
]

GENERATOR_VERSION = 2  # bump when the generator changes: cached sets become stale
MOTIONS = ("left", "right", "up", "down")  # the bright blob's steady direction
OBJECTS = ("bright blob", "dim blob")  # the two moving objects
OBJECT_BRIGHTNESS = (1.0, 0.45)
SOUNDS = ("low tone", "high tone")  # SOUNDS[k] is OBJECTS[k]'s voice
_VOICE_HZ = ((250.0, 450.0), (1500.0, 2500.0))
_DISTRACTOR_HZ = (700.0, 1100.0)  # between the two voices
MISSING = ("none", "dark", "silent")  # which modality a clip has lost
AUDIOVISUAL_SPLIT_SIZES = {"train": 3000, "val": 500, "test": 1000}
_DIRECTIONS = np.array([(0, -1), (0, 1), (-1, 0), (1, 0)], dtype=float)  # (row, col) per MOTIONS
LOG_MEL_MEAN, LOG_MEL_STD = 1.5, 2.0  # fixed normalisation of the log-mel values (measured)
_POWER_FLOOR = 1e-10  # added before the log


@dataclass(frozen=True)
class AudioVisualConfig:
    """Knobs of the generator; the defaults make the notebook's dataset."""

    num_frames: int = 4
    frame_size: int = 32
    blob_sigma: float = 2.5  # pixels
    step: float = 3.0  # pixels the blob moves per frame
    distractor_brightness: float = 0.0  # a third, jittering blob; off by default (see the docstring)
    frame_noise: float = 0.15
    sample_rate: int = 8000
    n_fft: int = 256
    hop_length: int = 128
    time_frames: int = 32  # spectrogram columns; the clip lasts (time_frames - 1) * hop_length samples
    n_mels: int = 32
    audio_noise: float = 0.1  # std of the background noise; the sounds peak at 1
    distractor_amplitude: float = 0.7
    missing_share: float = 0.1  # of the clips are dark, as many silent

    def __post_init__(self) -> None:
        travel = self.step * (self.num_frames - 1) + 6 * self.blob_sigma
        if travel >= self.frame_size:
            raise ValueError(f"the blob's path ({travel:.1f} pixels with its margins) must fit in the "
                             f"{self.frame_size}-pixel frame; lower step or blob_sigma")
        if not 0 <= 2 * self.missing_share <= 1:
            raise ValueError(f"missing_share must lie in [0, 0.5], got {self.missing_share}")
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(f"n_mels ({self.n_mels}) cannot exceed the {self.n_fft // 2 + 1} FFT bins")

    @property
    def num_samples(self) -> int:
        return (self.time_frames - 1) * self.hop_length


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)  # the HTK mel scale


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int) -> Tensor:
    """Triangular filters evenly spaced on the mel scale from 0 Hz to Nyquist, ``(n_mels, n_fft/2 + 1)``:
    filter m rises from mel point m to m + 1 and falls to m + 2 (the HTK construction)."""
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(0, _hz_to_mel(np.array(sample_rate / 2)), n_mels + 2)
    hz_points = 700.0 * (10 ** (mel_points / 2595.0) - 1.0)
    lower, centre, upper = hz_points[:-2, None], hz_points[1:-1, None], hz_points[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0, None)).float()


def log_mel_spectrogram(waveform: Tensor, config: AudioVisualConfig = AudioVisualConfig()) -> Tensor:
    """``(n, samples)`` waveforms -> ``(n, 1, n_mels, time_frames)`` normalised log-mel spectrograms:
    STFT (Hann window), power |X|^2, mel filterbank, log, then ``(x - mean) / std`` (fixed constants)."""
    if waveform.ndim != 2 or waveform.shape[1] != config.num_samples:
        raise ValueError(f"expected waveforms of shape (n, {config.num_samples}), "
                         f"got {tuple(waveform.shape)}")
    window = torch.hann_window(config.n_fft, dtype=waveform.dtype)
    spectrum = torch.stft(waveform, config.n_fft, config.hop_length, window=window, return_complex=True)
    power = spectrum.abs() ** 2  # n freq time
    mel = torch.einsum("mf,nft->nmt", mel_filterbank(config.n_fft, config.n_mels, config.sample_rate), power)
    return ((torch.log(mel + _POWER_FLOOR) - LOG_MEL_MEAN) / LOG_MEL_STD).unsqueeze(1)


def _blob(centre: np.ndarray, brightness: float, rows: np.ndarray, cols: np.ndarray,
          cfg: AudioVisualConfig) -> np.ndarray:
    """A round Gaussian blob peaking at ``brightness``, ``(H, W)``."""
    squared_distance = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
    return brightness * np.exp(-squared_distance / (2 * cfg.blob_sigma ** 2))


def _frames(rng: np.random.Generator, motions: Sequence[int], cfg: AudioVisualConfig) -> np.ndarray:
    """Both objects moving steadily (object k in ``MOTIONS[motions[k]]``) and a dim jittering distractor."""
    size, margin = cfg.frame_size, 3 * cfg.blob_sigma
    rows, cols = np.mgrid[0:size, 0:size]
    starts = []
    for motion in motions:
        path = cfg.step * (cfg.num_frames - 1) * _DIRECTIONS[motion]
        starts.append(rng.uniform(margin - np.minimum(path, 0), size - 1 - margin - np.maximum(path, 0)))
    distractor = rng.uniform(margin, size - 1 - margin, size=2)
    frames = np.empty((cfg.num_frames, 1, size, size))
    for t in range(cfg.num_frames):
        distractor = np.clip(distractor + rng.normal(0, cfg.step, size=2), margin, size - 1 - margin)
        frame = _blob(distractor, cfg.distractor_brightness, rows, cols, cfg)
        for brightness, start, motion in zip(OBJECT_BRIGHTNESS, starts, motions, strict=True):
            centre = start + t * cfg.step * _DIRECTIONS[motion]
            frame = np.maximum(frame, _blob(centre, brightness, rows, cols, cfg))
        frames[t, 0] = frame
    return frames


def _waveform(rng: np.random.Generator, source: int, cfg: AudioVisualConfig) -> np.ndarray:
    """The sounding object's voice (``SOUNDS[source]``) and a distractor burst between the two."""
    time = np.arange(cfg.num_samples) / cfg.sample_rate
    duration = time[-1]
    frequency = rng.uniform(*_VOICE_HZ[source])
    envelope = np.minimum(1.0, np.minimum(time, duration - time) / 0.02)  # 20 ms fade in and out
    burst_start = rng.uniform(0, duration * 0.7)
    burst = (time >= burst_start) & (time < burst_start + duration * 0.3)
    distractor = cfg.distractor_amplitude * burst * np.sin(2 * np.pi * rng.uniform(*_DISTRACTOR_HZ) * time)
    return envelope * np.sin(2 * np.pi * frequency * time) + distractor


def _clip(rng: np.random.Generator, cfg: AudioVisualConfig) -> dict[str, np.ndarray]:
    motions = rng.permutation(len(MOTIONS))[:len(OBJECTS)]  # the objects move in different directions
    source = int(rng.integers(len(OBJECTS)))  # the object whose sound we hear
    draw = rng.uniform()
    missing = 1 if draw < cfg.missing_share else 2 if draw < 2 * cfg.missing_share else 0
    frames = _frames(rng, motions, cfg) * (missing != 1)
    frames = frames + rng.normal(0, cfg.frame_noise, frames.shape)
    waveform = _waveform(rng, source, cfg) * (missing != 2) + rng.normal(0, cfg.audio_noise, cfg.num_samples)
    return {"frames": frames.astype(np.float32), "waveform": waveform.astype(np.float32),
            "label": np.int64(motions[source]), "source": np.int64(source),
            "other_motion": np.int64(motions[1 - source]), "missing": np.int64(missing)}


def generate_audiovisual_clips(num_clips: int, seed: int | Sequence[int],
                               config: AudioVisualConfig = AudioVisualConfig(),
                               keep_waveform: bool = False) -> dict[str, Tensor]:
    """``num_clips`` clips from ``seed`` (no cache): ``frames (n T 1 H W)`` and ``spectrogram
    (n 1 n_mels time)`` float32; ``label`` (the heard object's direction), ``source`` (which object
    is heard), ``other_motion`` (the other object's direction) and ``missing`` ``(n,)`` int64; with
    ``keep_waveform`` the ``waveform (n samples)``."""
    rng = np.random.default_rng(seed)
    clips = [_clip(rng, config) for _ in range(num_clips)]
    data = {key: torch.from_numpy(np.stack([clip[key] for clip in clips])) for key in clips[0]}
    data["spectrogram"] = log_mel_spectrogram(data["waveform"], config)
    if not keep_waveform:
        del data["waveform"]
    return data


def load_audiovisual_clips(split: str, seed: int = 0, num_clips: int | None = None,
                           config: AudioVisualConfig = AudioVisualConfig()) -> dict[str, Tensor]:
    """The ``split`` ("train", "val" or "test") of the audio-visual clips, from the cache under data/."""
    clips = cached_split("audiovisual", GENERATOR_VERSION, split, AUDIOVISUAL_SPLIT_SIZES, seed, num_clips,
                         config, generate_audiovisual_clips, "num_clips")
    validate_audiovisual(clips)
    return clips


def validate_audiovisual(clips: Mapping[str, Tensor]) -> None:
    """Check ``frames (n T c H W)``, ``spectrogram (n 1 M F)`` and ``label (n,)``; raise naming what came."""
    missing = sorted({"frames", "spectrogram", "label"} - set(clips))
    if missing:
        raise KeyError(f"expected keys 'frames', 'spectrogram' and 'label', missing {missing}; "
                       f"got {sorted(clips)}")
    frames, spectrogram, label = clips["frames"], clips["spectrogram"], clips["label"]
    if frames.ndim != 5:
        raise ValueError(f"expected frames of shape (n, T, c, H, W), got {tuple(frames.shape)}")
    if spectrogram.ndim != 4 or spectrogram.shape[1] != 1:
        raise ValueError(f"expected a spectrogram of shape (n, 1, mels, time), "
                         f"got {tuple(spectrogram.shape)}")
    if not (len(frames) == len(spectrogram) == len(label)) or label.ndim != 1:
        raise ValueError(f"expected as many clips in frames, spectrogram and label, got "
                         f"{len(frames)}, {len(spectrogram)} and label of shape {tuple(label.shape)}")
    num_classes = len(MOTIONS)
    if len(label) and not (0 <= int(label.min()) and int(label.max()) < num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got "
                         f"[{int(label.min())}, {int(label.max())}]")
