from dataclasses import replace

import pytest
import torch

from fusion_edu.datasets import (
    MISSING,
    MOTIONS,
    OBJECTS,
    SOUNDS,
    AudioVisualConfig,
    generate_audiovisual_clips,
    load_audiovisual_clips,
    log_mel_spectrogram,
    mel_filterbank,
    validate_audiovisual,
)

QUIET = AudioVisualConfig(frame_noise=0.0, audio_noise=0.0, distractor_brightness=0.0,
                          distractor_amplitude=0.0, missing_share=0.0)


def test_generation_is_deterministic_and_shaped():
    first, again = generate_audiovisual_clips(12, 0), generate_audiovisual_clips(12, 0)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert first["frames"].shape == (12, 4, 1, 32, 32) and first["spectrogram"].shape == (12, 1, 32, 32)
    assert "waveform" not in first
    assert generate_audiovisual_clips(2, 0, keep_waveform=True)["waveform"].shape == (2, 31 * 128)
    assert first["label"].max() < len(MOTIONS) and not torch.any(first["label"] == first["other_motion"])
    assert not torch.equal(first["frames"], generate_audiovisual_clips(12, 1)["frames"])


def _centre(mask):
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return torch.stack([(mask * rows).sum() / mask.sum(), (mask * cols).sum() / mask.sum()])


def test_the_frames_show_both_motions_and_the_audio_names_the_object():
    clips = generate_audiovisual_clips(24, 2, QUIET)
    steps = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
    for i, frames in enumerate(clips["frames"]):
        source, label, other = (int(clips[k][i]) for k in ("source", "label", "other_motion"))
        bright_motion = label if OBJECTS[source] == "bright blob" else other
        bright = [(frame[0] > 0.6).float() for frame in (frames[0], frames[-1])]  # only it exceeds 0.45
        expected = torch.tensor(steps[MOTIONS[bright_motion]], dtype=torch.float32) * QUIET.step * 3
        torch.testing.assert_close(_centre(bright[1]) - _centre(bright[0]), expected, atol=0.3, rtol=0)


def test_the_spectrogram_shows_which_object_sounds():
    clips = generate_audiovisual_clips(30, 3, QUIET)
    peak_band = clips["spectrogram"][:, 0].argmax(dim=1).float()  # strongest mel band per time frame
    for bands, source in zip(peak_band, clips["source"], strict=True):
        early, late = bands[2:8].mean(), bands[-8:-2].mean()
        assert abs(late - early) <= 1  # a steady tone
        if SOUNDS[int(source)] == "low tone":
            assert late < 10  # 250-450 Hz: mel bands 4-8
        else:
            assert late >= 18  # 1.5-2.5 kHz: mel bands 19-24


def test_mel_filterbank_is_triangular_and_ordered():
    bank = mel_filterbank(256, 32, 8000)
    assert bank.shape == (32, 129) and bank.min() >= 0 and bank.max() <= 1
    peaks = bank.argmax(dim=1)
    assert torch.all(peaks[1:] >= peaks[:-1])  # centres rise with the filter index
    assert torch.all(peaks[10:] > peaks[:-10])
    with pytest.raises(ValueError, match=r"waveforms of shape \(n, 3968\), got \(2, 100\)"):
        log_mel_spectrogram(torch.zeros(2, 100))


def test_missing_modalities():
    clips = generate_audiovisual_clips(400, 4, replace(AudioVisualConfig(), missing_share=0.2))
    counts = torch.bincount(clips["missing"], minlength=len(MISSING))
    assert 50 < counts[1] < 110 and 50 < counts[2] < 110  # 80 expected each
    dark = clips["frames"][clips["missing"] == MISSING.index("dark")]
    lit = clips["frames"][clips["missing"] == MISSING.index("none")]
    assert dark.amax(dim=(1, 2, 3, 4)).mean() < 0.8 < lit.amax(dim=(1, 2, 3, 4)).mean()
    silent = clips["spectrogram"][clips["missing"] == MISSING.index("silent")]
    heard = clips["spectrogram"][clips["missing"] == MISSING.index("none")]
    assert silent.amax(dim=(1, 2, 3)).mean() < heard.amax(dim=(1, 2, 3)).mean() - 1


def test_load_caches_and_validates(tmp_cache):
    first = load_audiovisual_clips("val", num_clips=8)
    assert any(tmp_cache.glob("audiovisual-val-seed0-n8*"))
    assert torch.equal(first["spectrogram"], load_audiovisual_clips("val", num_clips=8)["spectrogram"])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_audiovisual_clips("dev")
    with pytest.raises(KeyError, match=r"missing \['spectrogram'\]"):
        validate_audiovisual({"frames": first["frames"], "label": first["label"]})
    with pytest.raises(ValueError, match=r"frames of shape \(n, T, c, H, W\)"):
        validate_audiovisual({**first, "frames": first["frames"][:, 0]})
    with pytest.raises(ValueError, match=r"path .* must fit"):
        AudioVisualConfig(step=8.0)
