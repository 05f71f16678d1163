import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

from fusion_edu.blocks import Block
from fusion_edu.mbt import (
    FUSIONS,
    MBT,
    TubeletEmbed,
    bottleneck_attention_maps,
    bottleneck_fusion_layer,
    fusion_attention_mask,
    fusion_layer_flops,
    fusion_layer_step,
    modality_accuracies,
)
from fusion_edu.train import seeded, training_loss
from fusion_edu.widgets import bottleneck_explorer, sample_bottleneck_attention

SMALL = dict(num_frames=4, frame_size=16, tubelet=(2, 8), spectrogram_size=16, spectrogram_patch=8,
             num_classes=5, embed_dim=16, depth=3, num_heads=2)


def _clips(n=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {"frames": torch.randn(n, 4, 1, 16, 16, generator=generator),
            "spectrogram": torch.randn(n, 1, 16, 16, generator=generator),
            "label": torch.arange(n) % 5}


def _model(**options):
    with seeded(0):
        return MBT(**{**SMALL, "fusion_layer": 1, **options}).eval()


def test_bottleneck_update_is_parallel_and_averaged():
    with seeded(0):
        layers = {"frames": Block(16, 2), "spectrogram": Block(16, 2)}
    tokens = {"frames": torch.randn(2, 5, 16), "spectrogram": torch.randn(2, 3, 16)}
    bottleneck = torch.randn(2, 4, 16)
    new_tokens, new_bottleneck, _ = bottleneck_fusion_layer(layers, tokens, bottleneck)
    frames_out, _ = layers["frames"](torch.cat([tokens["frames"], bottleneck], dim=1))
    audio_out, _ = layers["spectrogram"](torch.cat([tokens["spectrogram"], bottleneck], dim=1))
    torch.testing.assert_close(new_tokens["frames"], frames_out[:, :5])
    torch.testing.assert_close(new_tokens["spectrogram"], audio_out[:, :3])
    # both modalities read the same z_fsn^l (parallel), and z_fsn^{l+1} is their mean
    torch.testing.assert_close(new_bottleneck, (frames_out[:, 5:] + audio_out[:, 3:]) / 2)


def _frames_logits_depend_on_audio(model):
    clips, other = _clips(), _clips()
    other["spectrogram"] = torch.randn_like(other["spectrogram"])
    with torch.no_grad():
        first, second = model(clips).modality_logits["frames"], model(other).modality_logits["frames"]
    return not torch.allclose(first, second)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_which_modes_let_audio_reach_the_frames_stream(fusion):
    options = {"share_encoder": True} if fusion == "vanilla" else {}
    assert _frames_logits_depend_on_audio(_model(fusion=fusion, **options)) == (fusion != "late")
    # L_f = depth: every layer unimodal, whatever the mode
    assert not _frames_logits_depend_on_audio(_model(fusion=fusion, fusion_layer=3, **options))
    # one fusion layer: the bottleneck tokens are written to but never read again
    last_layer_only = _model(fusion=fusion, fusion_layer=2, **options)
    assert _frames_logits_depend_on_audio(last_layer_only) == (fusion in ("vanilla", "cross"))


def test_evaluation_without_bottlenecks_is_unimodal():
    model = _model(fusion="bottleneck", test_with_bottlenecks=False)
    assert not _frames_logits_depend_on_audio(model)
    assert _frames_logits_depend_on_audio(model.train())  # training always uses them


def test_vanilla_equals_cross_attention_with_shared_weights():
    """Attention is permutation-equivariant: one shared layer over [frames; audio] gives each
    modality what a shared layer over [the other; its own] gives it."""
    vanilla, cross = _model(fusion="vanilla", share_encoder=True), _model(fusion="cross", share_encoder=True)
    cross.load_state_dict(vanilla.state_dict())
    clips = _clips()
    with torch.no_grad():
        torch.testing.assert_close(vanilla(clips).logits, cross(clips).logits)
    separate = _model(fusion="cross")
    assert separate.layers["frames"] is not separate.layers["spectrogram"]


def test_attention_shapes_follow_the_mode():
    clips = _clips()
    frames_tokens, audio_tokens, bottlenecks = 1 + 8, 1 + 4, 2
    shapes = {
        "bottleneck": (frames_tokens + bottlenecks, audio_tokens + bottlenecks),
        "cross": (frames_tokens + audio_tokens,) * 2,
    }
    for fusion, (frames_len, audio_len) in shapes.items():
        model = _model(fusion=fusion, fusion_layer=1, num_bottlenecks=bottlenecks)
        output = model(clips, return_attention=True)
        assert output.attention[0]["frames"].shape[-1] == frames_tokens  # before L_f: unimodal
        assert output.attention[1]["frames"].shape[-1] == frames_len
        assert output.attention[1]["spectrogram"].shape[-1] == audio_len
        if fusion == "cross":  # only a modality's own tokens are queries
            assert output.attention[1]["frames"].shape[-2] == frames_tokens
    vanilla = _model(fusion="vanilla", share_encoder=True, fusion_layer=1)(clips, return_attention=True)
    assert vanilla.attention[2]["joint"].shape[-1] == frames_tokens + audio_tokens


def test_the_gap_classifier_has_no_cls_tokens_and_averages_every_token():
    clips = _clips()
    model = _model(classifier="gap").eval()
    assert model.cls_tokens is None and not any("cls" in name for name, _ in model.named_parameters())
    tokens = model.embed(clips)
    assert {m: x.shape[1] for m, x in tokens.items()} == {"frames": 8, "spectrogram": 4}  # patches only
    bottleneck = model.bottleneck_tokens.expand(3, -1, -1)
    with torch.no_grad():
        for index in range(len(model.layers["frames"])):
            layers = {m: model.layers[m][index] for m in tokens}
            fusion = model.fusion if model.fuses_at(index) else "late"
            tokens, bottleneck, _ = fusion_layer_step(fusion, layers, tokens, bottleneck)
        every_token = torch.cat([model.norm(x) for x in tokens.values()], dim=1)  # b (8 + 4) d
        torch.testing.assert_close(model(clips).logits, model.head(every_token.mean(1)))


def test_token_classifier_trains_on_the_mean_of_the_modalities_losses():
    model, clips = _model().train(), _clips()
    output = model(clips)
    losses = [F.cross_entropy(logits, clips["label"]) for logits in output.modality_logits.values()]
    expected = sum(losses) / 2
    torch.testing.assert_close(training_loss(output, clips), expected)
    torch.testing.assert_close(output.logits, (output.modality_logits["frames"]
                                               + output.modality_logits["spectrogram"]) / 2)
    gap = _model(classifier="gap")(clips)
    assert gap.modality_logits is None and gap.logits.shape == (3, 5)


def test_modality_accuracies_score_each_stream_and_each_missing_modality():
    model, clips = _model(), _clips(n=6)
    clips["missing"] = torch.tensor([0, 0, 1, 1, 2, 2])  # none, none, dark, dark, silent, silent
    with torch.no_grad():
        output = model(clips)
    right = {key: logits.argmax(1) == clips["label"]
             for key, logits in {"fused": output.logits, **output.modality_logits}.items()}
    scores = modality_accuracies(model, clips)
    for key, correct in right.items():
        assert scores[key] == pytest.approx(correct.float().mean().item())
    for index, missing in enumerate(("none", "dark", "silent")):
        assert scores[missing] == pytest.approx(right["fused"][2 * index:2 * index + 2].float().mean().item())
    with pytest.raises(ValueError, match="need classifier='token', got 'gap'"):
        modality_accuracies(_model(classifier="gap"), clips)


def test_bad_configurations_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"L_f must lie in \[0, depth\] = \[0, 3\], got 4"):
        MBT(**SMALL, fusion_layer=4)
    with pytest.raises(ValueError, match="B >= 1 bottleneck tokens, got 0"):
        MBT(**SMALL, num_bottlenecks=0)
    with pytest.raises(ValueError, match="needs share_encoder=True"):
        MBT(**SMALL, fusion="vanilla")
    with pytest.raises(ValueError, match="tubelets of 3 frames x 8x8 pixels must tile"):
        MBT(**{**SMALL, "tubelet": (3, 8)})
    with pytest.raises(ValueError, match="patch size must divide the image size"):
        MBT(**{**SMALL, "spectrogram_patch": 5})
    with pytest.raises(ValueError, match=r"expected frames of shape \(batch, 4, 1, 16, 16\)"):
        _model()({**_clips(), "frames": torch.randn(3, 4, 16, 16)})
    with pytest.raises(KeyError, match=r"missing \['spectrogram'\]"):
        _model()({"frames": _clips()["frames"]})


def test_tubelet_embedding_is_a_linear_map_of_each_tubelet():
    embed = TubeletEmbed(4, 16, (2, 8), 1, 6)
    frames = torch.randn(1, 4, 1, 16, 16)
    tokens = embed(frames)
    assert tokens.shape == (1, 2 * 2 * 2, 6)
    tubelet = frames[0, 2:4, 0, 8:16, 0:8]  # second frame pair, bottom-left block: token 1*4 + 2*1 + 0
    by_hand = (embed.proj.weight[:, 0] * tubelet).sum(dim=(1, 2, 3)) + embed.proj.bias
    torch.testing.assert_close(tokens[0, 4 + 2], by_hand)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_attention_mask_is_what_one_fusion_layer_depends_on(fusion):
    """Row i of the mask is True exactly where token i's output has a gradient from token j."""
    counts, bottlenecks = {"frames": 3, "spectrogram": 2}, 2
    with seeded(0):
        shared = Block(8, 2)
        layers = {"frames": shared, "spectrogram": shared if fusion == "vanilla" else Block(8, 2)}
    tokens = {m: torch.randn(1, n, 8, requires_grad=True) for m, n in counts.items()}
    bottleneck = torch.randn(1, bottlenecks, 8, requires_grad=True)
    new_tokens, new_bottleneck, _ = fusion_layer_step(fusion, layers, tokens, bottleneck)
    outputs = torch.cat([*new_tokens.values(), new_bottleneck], dim=1)[0]  # n d
    inputs = [*tokens.values(), bottleneck]
    mask = fusion_attention_mask(fusion, counts, bottlenecks)
    keep = slice(None) if fusion == "bottleneck" else slice(0, sum(counts.values()))
    def reads(row):  # (n,): which input tokens this output token has a gradient from
        grads = torch.autograd.grad(row.sum(), inputs, retain_graph=True, materialize_grads=True)
        return torch.cat([g[0].abs().sum(-1) for g in grads]) > 0

    depends = torch.stack([reads(row) for row in outputs[keep]])
    assert torch.equal(depends[:, keep], mask)


def _layer_flops(n: int, d: int = 64, mlp_ratio: float = 2.0, context: int = 0) -> float:
    """One transformer layer over n tokens: linear maps 2 n d^2 (4 + 2r), attention 4 n^2 d; with
    ``context`` more tokens read as keys and values only, their K and V maps 4 n_c d^2 and the n
    queries' attention over n_c + n keys, 4 n (n_c + n) d."""
    return 2 * n * d ** 2 * (4 + 2 * mlp_ratio) + 4 * context * d ** 2 + 4 * n * (n + context) * d


@pytest.mark.parametrize("frames, spectrogram", [(33, 17), (1569, 401)])
def test_fusion_layer_flops_match_the_closed_form_of_each_mode(frames: int, spectrogram: int) -> None:
    tokens, b = {"frames": frames, "spectrogram": spectrogram}, 4
    expected = {"late": _layer_flops(frames) + _layer_flops(spectrogram),
                "vanilla": _layer_flops(frames + spectrogram),
                "cross": (_layer_flops(frames, context=spectrogram)
                          + _layer_flops(spectrogram, context=frames)),
                "bottleneck": _layer_flops(frames + b) + _layer_flops(spectrogram + b)}
    measured = {fusion: fusion_layer_flops(fusion, tokens, num_bottlenecks=b) for fusion in FUSIONS}
    assert measured == expected


def test_bottlenecks_save_flops_only_when_the_modalities_hold_many_tokens() -> None:
    small, large = {"frames": 33, "spectrogram": 17}, {"frames": 1569, "spectrogram": 401}
    assert fusion_layer_flops("bottleneck", small) > fusion_layer_flops("vanilla", small)
    assert fusion_layer_flops("bottleneck", large) < 0.75 * fusion_layer_flops("vanilla", large)
    with pytest.raises(ValueError, match="fusion must be one of"):
        fusion_layer_flops("early", small)


def test_bottleneck_attention_maps_read_the_bottleneck_row_and_column_on_each_token_grid() -> None:
    with seeded(0):
        model = MBT(**SMALL, fusion="bottleneck", num_bottlenecks=3).eval()
    with torch.no_grad():
        attention = model(_clips(), return_attention=True).attention
    assert model.token_grids == {"frames": (2, 2, 2), "spectrogram": (2, 2)}
    clip = {m: w[1] for m, w in attention[2].items()}  # fusion layer 2, second clip
    maps = bottleneck_attention_maps(clip, 1, model.token_grids)
    frames = clip["frames"].mean(0)  # over [CLS; 8 tubelets; 3 bottlenecks]
    torch.testing.assert_close(maps["frames"]["reads"].flatten(), frames[1 + 8 + 1, 1:9])
    torch.testing.assert_close(maps["frames"]["read_by"].flatten(), frames[1:9, 1 + 8 + 1])
    for pieces in maps.values():  # the bottleneck's attention row sums to one
        total = pieces["reads"].sum() + pieces["reads_cls"] + pieces["reads_bottlenecks"]
        torch.testing.assert_close(total, torch.tensor(1.0))
    other = bottleneck_attention_maps(clip, 2, model.token_grids)
    assert not torch.equal(other["spectrogram"]["reads"], maps["spectrogram"]["reads"])
    with pytest.raises(IndexError, match=r"\[0, 3\), got 3"):
        bottleneck_attention_maps(clip, 3, model.token_grids)
    unimodal_layer = {m: w[1] for m, w in attention[0].items()}  # before L_f: no bottleneck tokens
    with pytest.raises(ValueError, match="at least one bottleneck token"):
        bottleneck_attention_maps(unimodal_layer, 0, model.token_grids)


def test_bottleneck_explorer_reads_each_fusion_layer_of_one_clip() -> None:
    with seeded(0):
        model = MBT(**SMALL, fusion="bottleneck", num_bottlenecks=3)
    clips = _clips()
    attention = sample_bottleneck_attention(model, clips, 2)
    with torch.no_grad():
        expected = model({k: v[2:3] for k, v in clips.items()}, return_attention=True).attention
    assert attention[2]["frames"].shape == (2, 1 + 8 + 3, 1 + 8 + 3)  # heads; CLS, tubelets, bottlenecks
    torch.testing.assert_close(attention[2]["spectrogram"], expected[2]["spectrogram"][0])
    explorer = bottleneck_explorer(model, clips)
    sliders = {child.description: child for child in explorer.children[:-1]}
    assert (sliders["layer"].min, sliders["layer"].max) == (2, 2) and sliders["bottleneck"].max == 2
    assert sliders["clip"].max == 2
    with pytest.raises(ValueError, match="got fusion='late'"):
        bottleneck_explorer(MBT(**SMALL, fusion="late"), clips)
    plt.close("all")
