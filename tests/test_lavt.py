import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusion_edu.datasets.referring import MAX_WORDS, VOCABULARY, generate_referring_scenes, tokenize
from fusion_edu.lavt import (
    FUSIONS,
    LAVT,
    PWAM,
    LanguageGate,
    LAVTOutput,
    MaskDecoder,
    PretrainedTextEncoder,
    language_pathway,
    pathway_statistics,
    referring_inputs,
)
from fusion_edu.plotting import plot_referring
from fusion_edu.train import seeded, training_loss
from fusion_edu.widgets import sample_referring


def _pwam_inputs(batch=2, pixels=12, words=5):
    with seeded(0):
        visual, language = torch.randn(batch, pixels, 16), torch.randn(batch, words, 8)
    mask = torch.ones(batch, words, dtype=torch.bool)
    mask[0, 3:] = False  # sample 0 has 3 words and 2 padding slots
    return visual, language, mask


def test_padding_words_do_not_change_pwams_output():
    with seeded(0):
        pwam = PWAM(visual_dim=16, language_dim=8, num_heads=2).eval()
    visual, language, mask = _pwam_inputs()
    fused, weights = pwam(visual, language, mask)
    garbage = language.clone()
    garbage[0, 3:] = 100 * torch.randn(2, 8)  # whatever sits in the padding slots
    refused, _ = pwam(visual, garbage, mask)
    torch.testing.assert_close(refused, fused)
    longer_language = torch.cat([language, torch.randn(2, 4, 8)], dim=1)  # four more padding words
    longer_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    longer, _ = pwam(visual, longer_language, longer_mask)
    torch.testing.assert_close(longer, fused)
    assert weights.shape == (2, 2, 12, 5)
    assert weights[0, :, :, 3:].max() < 1e-6  # no attention on padding
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 12))


def test_pwam_is_the_official_layer_sequence_written_out():
    with seeded(0):
        pwam = PWAM(visual_dim=16, language_dim=8).eval()
    visual, language, mask = _pwam_inputs()
    pixels, words = visual.transpose(1, 2), language.transpose(1, 2)  # b c n, b c t
    query = F.instance_norm(pwam.query[0](pixels))
    key = pwam.key(words) * mask[:, None]
    value = pwam.value(words) * mask[:, None]
    logits = query.transpose(1, 2) @ key / 16**0.5  # b n t
    logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
    language_per_pixel = value @ logits.softmax(-1).transpose(1, 2)  # b c n
    attended = F.instance_norm(pwam.attention_output[0](language_per_pixel))
    by_hand = F.gelu(pwam.fused_projection[0](F.gelu(pwam.visual_projection[0](pixels)) * attended))
    fused, _ = pwam(visual, language, mask)
    torch.testing.assert_close(fused, by_hand.transpose(1, 2), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match=r"bool word mask of shape \(2, 5\), got torch.bool \(2, 4\)"):
        pwam(visual, language, mask[:, :4])


def test_multi_head_pwam_scales_by_all_key_channels_as_the_official_code():
    with seeded(0):
        pwam = PWAM(visual_dim=16, language_dim=8, num_heads=2).eval()
    visual, language, mask = _pwam_inputs()
    pixels, words = visual.transpose(1, 2), language.transpose(1, 2)  # b c n, b c t
    query = F.instance_norm(pwam.query[0](pixels))
    key, value = pwam.key(words) * mask[:, None], pwam.value(words) * mask[:, None]
    heads = []
    for h in (slice(0, 8), slice(8, 16)):  # each head: 8 of the 16 key and value channels
        logits = query[:, h].transpose(1, 2) @ key[:, h] / 16**0.5  # b n t: key_channels^-1/2, not 8^-1/2
        logits = logits.masked_fill(~mask[:, None, :], float("-inf"))
        heads.append(value[:, h] @ logits.softmax(-1).transpose(1, 2))  # b 8 n
    attended = F.instance_norm(pwam.attention_output[0](torch.cat(heads, dim=1)))
    by_hand = F.gelu(pwam.fused_projection[0](F.gelu(pwam.visual_projection[0](pixels)) * attended))
    fused, weights = pwam(visual, language, mask)
    assert weights.shape == (2, 2, visual.shape[1], language.shape[1])
    torch.testing.assert_close(fused, by_hand.transpose(1, 2), atol=1e-5, rtol=1e-4)


def test_the_gate_starts_closed_and_learns_but_zeroing_both_layers_kills_it():
    torch.manual_seed(0)
    fused, visual = torch.randn(4, 10, 16), torch.randn(4, 10, 16)
    for zero_both, learns in ((False, True), (True, False)):
        gate = LanguageGate(16, zero_both=zero_both)
        combined, opening = language_pathway(visual, fused, gate)
        torch.testing.assert_close(combined, visual)  # closed at the start: E_i = V_i
        assert opening.abs().max() == 0
        (combined * torch.randn_like(combined)).sum().backward()
        gradient = sum(p.grad.abs().sum() for p in gate.parameters())
        assert (gradient > 0) == learns, (zero_both, gradient)
    with pytest.raises(ValueError, match="one shape"):
        language_pathway(visual, fused[:, :5], gate)


def test_language_pathway_is_eq_9():
    torch.manual_seed(0)
    gate = LanguageGate(8)
    nn.init.normal_(gate.layers[2].weight)  # open it
    visual, fused = torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    combined, opening = language_pathway(visual, fused, gate)
    expected_gate = torch.tanh(gate.layers[2](torch.relu(gate.layers[0](fused))))
    torch.testing.assert_close(opening, expected_gate)
    torch.testing.assert_close(combined, expected_gate * fused + visual)


def test_mask_decoder_upsamples_concatenates_and_predicts_two_classes():
    dims = (8, 16, 32, 64)
    features = [torch.randn(2, d, 16 // 2**i, 16 // 2**i) for i, d in enumerate(dims)]
    decoder = MaskDecoder(dims, hidden_dim=12)
    logits = decoder(features, (64, 64))
    assert logits.shape == (2, 2, 64, 64)
    assert [stage[0][0].in_channels for stage in decoder.stages] == [64 + 32, 12 + 16, 12 + 8]


def test_lavt_loss_is_the_class_weighted_cross_entropy():
    logits = torch.randn(2, 2, 4, 4)
    mask = torch.rand(2, 4, 4) > 0.5
    per_pixel = F.cross_entropy(logits, mask.long(), reduction="none")
    weights = torch.where(mask, 1.1, 0.9)
    loss = training_loss(LAVTOutput(logits=logits), {"label": mask.long()})
    torch.testing.assert_close(loss, (per_pixel * weights).sum() / weights.sum())
    with pytest.raises(ValueError, match=r"targets of shape \(2, 4, 4\) .* got \(2, 2, 4\)"):
        training_loss(LAVTOutput(logits=logits), {"label": mask[:, :2].long()})


def _referring_batch():
    expressions = ["the red circle", "the square left of the blue triangle"]
    ids, mask = tokenize(expressions, max_words=MAX_WORDS)
    with seeded(0):
        image = torch.rand(2, 3, 64, 64)
    return {"image": image, "words": ids, "word_mask": mask}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_lavt_forward_shapes_and_padding_invariance(fusion):
    with seeded(0):
        model = LAVT(fusion=fusion).eval()
    batch = _referring_batch()
    output = model(batch)
    assert output.logits.shape == (2, 2, 64, 64)
    garbage = batch["words"].clone()
    garbage[~batch["word_mask"]] = VOCABULARY.index("circle")  # real words hidden in the padding slots
    again = model({**batch, "words": garbage})
    torch.testing.assert_close(again.logits, output.logits)
    if fusion == "late":
        assert output.word_attention is None and not hasattr(model, "pwams")
    else:
        assert [w.shape[2] for w in output.word_attention] == [256, 64, 16, 4]  # pixels per stage
    if fusion == "pwam":
        assert all(opening == 0 for opening in output.gate_openings)  # the gates start closed
    else:
        assert output.gate_openings is None and not hasattr(model, "gates")


def test_closed_gates_are_lavt_with_every_gate_at_zero():
    """The control differs from LAVT in one thing: S_i = 0, so E_i = V_i and F_i reaches only the decoder."""
    with seeded(0):
        lavt = LAVT().eval()
    closed = LAVT(fusion="closed_gates").eval()
    missing, unexpected = closed.load_state_dict(lavt.state_dict(), strict=False)
    assert not missing and unexpected and all(key.startswith("gates.") for key in unexpected), unexpected
    batch = _referring_batch()
    torch.testing.assert_close(closed(batch).logits, lavt(batch).logits)  # LAVT's gates start at S_i = 0
    with seeded(1):
        nn.init.normal_(lavt.gates[0].layers[2].weight)  # stage 1's gate opens
    assert not torch.allclose(closed(batch).logits, lavt(batch).logits)


def test_pathway_statistics_measure_the_gates_and_what_they_gate():
    with seeded(0):
        model = LAVT().eval()
    scenes = generate_referring_scenes(6, seed=0)
    shut = pathway_statistics(model, scenes)
    assert shut["opening"] == [0.0] * 3 and shut["slope"] == [1.0] * 3  # tanh(0) = 0, slope 1
    with seeded(1):
        for gate in model.gates:
            nn.init.normal_(gate.layers[2].weight, std=3.0)  # open far, into tanh's flat ends
    opened = pathway_statistics(model, scenes)
    with torch.inference_mode():
        output = model(referring_inputs(scenes, model.text))
    torch.testing.assert_close(torch.tensor(opened["opening"]), torch.stack(output.gate_openings))
    assert all(0 < slope < 0.9 for slope in opened["slope"]), opened
    # stage 1's V_1 and F_1 come before any gate; an open gate changes what the later stages see
    for key in ("visual", "fused"):
        assert opened[key][0] == pytest.approx(shut[key][0]), key
    assert opened["visual"][1] != pytest.approx(shut["visual"][1]), (opened, shut)
    for fusion in ("closed_gates", "late"):
        with pytest.raises(ValueError, match=f"has gates, got fusion='{fusion}'"):
            pathway_statistics(LAVT(fusion=fusion), scenes)


def test_lavt_gates_learn_from_the_mask_loss():
    with seeded(0):
        model = LAVT()
    batch = _referring_batch()
    target = torch.zeros(2, 64, 64, dtype=torch.long)
    target[:, 20:40, 20:40] = 1
    training_loss(model(batch), {"label": target}).backward()
    assert len(model.gates) == 3  # stages 1-3 feed the next stage; the last feeds none
    assert all(gate.layers[2].weight.grad.abs().sum() > 0 for gate in model.gates)
    with pytest.raises(ValueError, match="fusion must be one of"):
        LAVT(fusion="early")
    with pytest.raises(ValueError, match=f"at most {MAX_WORDS} words, got {MAX_WORDS + 1}"):
        too_long = torch.zeros(1, MAX_WORDS + 1, dtype=torch.long)
        model.text(too_long, too_long == 0)


@pytest.fixture(scope="module")
def minilm():
    return PretrainedTextEncoder()


def test_the_pretrained_encoder_loads_offline_and_remembers_exactly_what_it_would_compute(minilm):
    expressions = ["the red circle", "the square left of the blue triangle", "the red circle"]
    ids, mask = minilm.tokenize(expressions)
    assert ids.shape == mask.shape == (3, minilm.max_tokens) and minilm.dim == 384
    assert mask.sum(1).tolist() == [5, 9, 5]  # [CLS] + words + [SEP]
    minilm.train()
    assert not minilm.encoder.training and not any(p.requires_grad for p in minilm.parameters())
    features = minilm(ids, mask)
    direct = minilm.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(features, direct, atol=1e-5, rtol=1e-4)
    assert len(minilm._remembered) == 2  # two distinct expressions
    with pytest.raises(ValueError, match="expression 1 is empty"):
        minilm.tokenize(["the red circle", "  "])
    with pytest.raises(ValueError, match="more than max_tokens = 16"):
        minilm.tokenize([" ".join(["the red circle"] * 6)])


def test_lavt_takes_either_text_encoder_through_referring_inputs(minilm):
    scenes = generate_referring_scenes(4, seed=[0, 9])
    for encoder in (None, minilm):
        with seeded(0):
            model = LAVT(encoder).eval()
        data = referring_inputs(scenes, model.text)
        assert data["image"].dtype == torch.float32 and data["image"].max() <= 1
        assert torch.equal(data["label"].bool(), scenes["mask"])
        assert model(data).logits.shape == (4, 2, 64, 64)


def test_the_explorer_callbacks_show_what_the_model_computes():
    scenes = generate_referring_scenes(3, seed=[0, 9])
    with seeded(0):
        model = LAVT().eval()
    own, other = scenes["expression"][1], "the leftmost object"
    sample = sample_referring(model, scenes, 1, own)
    output = model({key: value[1:2] for key, value in referring_inputs(scenes, model.text).items()})
    assert torch.equal(sample["mask"], output.logits[0].argmax(0).bool())
    assert sample["words"] == own.split()
    assert [tuple(a.shape) for a in sample["word_attention"]] == [(len(own.split()), 16 // 2**i, 16 // 2**i)
                                                                   for i in range(4)]
    for attention in sample["word_attention"]:  # every pixel's attention over the real words sums to 1
        torch.testing.assert_close(attention.sum(0), torch.ones(attention.shape[1:]))
    assert sample["gate_openings"] == [0.0, 0.0, 0.0]  # closed at initialisation
    assert sample_referring(model, scenes, 1, other)["words"] == other.split()  # any expression, same image
    with pytest.raises(ValueError, match="expression 0 is empty"):
        sample_referring(model, scenes, 1, " ")
    with pytest.raises(ValueError, match="fusion='late'"):
        sample_referring(LAVT(fusion="late"), scenes, 1, own)
    figure = plot_referring(scenes["image"][1], own, sample["mask"], sample["words"],
                            sample["word_attention"][0], sample["gate_openings"], stage=1)
    shown = [ax for ax in figure.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert len(shown) == 2 + len(sample["words"]) and shown[1].get_title() == f"{own.split()[0]!r}, stage 1"
    assert len(shown[0].collections) == 2  # the mask outlined twice, black under white: seen on any colour
    assert shown[-1].get_ylabel() == "mean |S_i|" and len(shown[-1].get_yticks()) > 1  # the gates' y-axis
    assert shown[0].images[0].get_array().max() <= 1  # the uint8 scene is shown as it is, not clipped white
    plt.close(figure)
    image, words, attention, gates = scenes["image"][1], sample["words"], sample["word_attention"][0], [0.1]
    with pytest.raises(ValueError, match="one attention map per word"):
        plot_referring(image, own, sample["mask"], words[:-1], attention, gates, stage=1)
    with pytest.raises(ValueError, match=r"mask of the image's size \(64, 64\)"):
        plot_referring(image, own, sample["mask"][:32], words, attention, gates, stage=1)


def test_the_pretrained_encoder_fine_tunes_when_asked(minilm):
    tuned = PretrainedTextEncoder(finetune=True).train()
    assert tuned.encoder.training and all(p.requires_grad for p in tuned.parameters())
    ids, mask = tuned.tokenize(["the red circle", "the blue square"])
    tuned(ids, mask).sum().backward()
    assert tuned.encoder.embeddings.word_embeddings.weight.grad.abs().sum() > 0
    assert not tuned._remembered  # nothing is remembered: the features change as it trains
    torch.testing.assert_close(tuned.eval()(ids, mask), minilm(ids, mask), atol=1e-5, rtol=1e-4)


def test_the_course_encoder_has_swins_hierarchy_but_no_shifted_windows():
    """What notebook 07 says of the encoder: one block per stage, so no block shifts its windows."""
    model = LAVT(fusion="late")
    blocks = [block for stage in model.stages for block in stage.blocks]
    assert len(blocks) == len(model.stages) == 4
    assert all(tuple(block.shift_size) == (0, 0) for block in blocks)
    assert [tuple(block.window_size) for block in blocks] == [(4, 4), (4, 4), (4, 4), (2, 2)]
