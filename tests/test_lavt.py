import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fusion_edu.datasets.referring import MAX_WORDS, VOCABULARY, tokenize
from fusion_edu.lavt import FUSIONS, LAVT, PWAM, LanguageGate, MaskDecoder, language_pathway, referring_loss
from fusion_edu.train import seeded


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


def test_referring_loss_is_class_weighted_cross_entropy():
    logits = torch.randn(2, 2, 4, 4)
    mask = torch.rand(2, 4, 4) > 0.5
    per_pixel = F.cross_entropy(logits, mask.long(), reduction="none")
    weights = torch.where(mask, 1.1, 0.9)
    torch.testing.assert_close(referring_loss(logits, mask), (per_pixel * weights).sum() / weights.sum())
    with pytest.raises(ValueError, match=r"logits \(b, 2, H, W\) matching the mask"):
        referring_loss(logits, mask[:, :2])


def _referring_batch():
    expressions = ["the red circle", "the square left of the blue triangle"]
    ids, mask = tokenize(expressions, max_words=MAX_WORDS)
    with seeded(0):
        image = torch.rand(2, 3, 64, 64)
    return {"image": image, "words": ids, "word_mask": mask}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_lavt_forward_shapes_and_padding_invariance(fusion):
    with seeded(0):
        model = LAVT(len(VOCABULARY), MAX_WORDS, fusion=fusion).eval()
    batch = _referring_batch()
    output = model(batch)
    assert output.logits.shape == (2, 2, 64, 64)
    garbage = batch["words"].clone()
    garbage[~batch["word_mask"]] = VOCABULARY.index("circle")  # real words hidden in the padding slots
    again = model({**batch, "words": garbage})
    torch.testing.assert_close(again.logits, output.logits)
    if fusion == "pwam":
        assert [w.shape[2] for w in output.word_attention] == [256, 64, 16, 4]  # pixels per stage
        assert all(opening == 0 for opening in output.gate_openings)  # the gates start closed
    else:
        assert output.word_attention is None and not hasattr(model, "pwams")


def test_lavt_gates_learn_from_the_mask_loss():
    with seeded(0):
        model = LAVT(len(VOCABULARY), MAX_WORDS)
    batch = _referring_batch()
    target = torch.zeros(2, 64, 64, dtype=torch.bool)
    target[:, 20:40, 20:40] = True
    referring_loss(model(batch).logits, target).backward()
    assert len(model.gates) == 3  # stages 1-3 feed the next stage; the last feeds none
    assert all(gate.layers[2].weight.grad.abs().sum() > 0 for gate in model.gates)
    with pytest.raises(ValueError, match="fusion must be one of"):
        LAVT(len(VOCABULARY), MAX_WORDS, fusion="early")
    with pytest.raises(ValueError, match=f"at most {MAX_WORDS} words, got {MAX_WORDS + 1}"):
        too_long = torch.zeros(1, MAX_WORDS + 1, dtype=torch.long)
        model.text(too_long, too_long == 0)
