"""The fast Restormer blocks against plain reference formulas: values, gradients, both memory layouts."""
import pytest
import torch
import torch.nn.functional as F

from vlu_plugin.archs.restormer_blocks import GDFN, Upsample, channel_attention, channels_last, layer_norm


def reference_attention(q, k, v, temperature, heads):
    """Restormer's channel attention written the obvious way (F.normalize, autograd backward)."""
    b, c, h, w = v.shape
    q, k, v = (t.reshape(b, heads, c // heads, h * w) for t in (q, k, v))
    attn = torch.softmax(F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * temperature, dim=-1)
    return (attn @ v).reshape(b, c, h, w)


def reference_gdfn(ffn, x):
    """GDFN without padding or splitting: one 1×1 conv, one depthwise conv, chunk, gate."""
    gate, value = ffn.dwconv(ffn.project_in(x)).chunk(2, dim=1)
    return ffn.project_out(F.gelu(gate) * value)


PACKINGS = {  # how MDTA, VLU-Net's prompt attention and AdaIR's cross attention hand over q, k, v
    'qkv': lambda t: {'qkv': t},
    'qv,k': lambda t: {'qv': torch.cat([t[:, :6], t[:, 12:]], 1), 'k': t[:, 6:12]},
    'q,kv': lambda t: {'q': t[:, :6], 'kv': t[:, 6:]},
    'q,k,v': lambda t: dict(zip('qkv', t.chunk(3, dim=1))),
}


# every packing at two heads, channels_last; the other head counts and layouts with one packing (gradcheck in
# double precision costs seconds per case)
@pytest.mark.parametrize('heads,layout,packing', [(2, 'channels_last', packing) for packing in sorted(PACKINGS)] +
                         [(1, 'channels_last', 'qkv'), (3, 'contiguous', 'q,k,v')])
def test_channel_attention_values_and_hand_written_backward(heads, layout, packing):
    gen = torch.Generator().manual_seed(heads)
    qkv = torch.randn(2, 3 * 6, 5, 4, dtype=torch.double, generator=gen)
    qkv = channels_last(qkv) if layout == 'channels_last' else qkv.contiguous()
    qkv.requires_grad_()
    temperature = (torch.rand(heads, 1, 1, dtype=torch.double, generator=gen) + 0.5).requires_grad_()

    def ours(x, t):
        return channel_attention(t, heads, **PACKINGS[packing](x))

    out = ours(qkv, temperature)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, reference_attention(*qkv.chunk(3, dim=1), temperature, heads), atol=1e-12)
    # the parts' gradients are written into preallocated buffers: gradcheck compares them with finite differences
    assert torch.autograd.gradcheck(ours, (qkv, temperature))


def test_channel_attention_names_q_k_v_once():
    t = torch.randn(1, 6, 2, 2)
    with pytest.raises(ValueError, match='q, k and v once'):
        channel_attention(torch.ones(1, 1, 1), 1, qk=t, kv=t)


@pytest.mark.parametrize('dim,bias', [(48, False), (20, True)])  # hidden 127 → padded to 128; 53 → 64
@pytest.mark.parametrize('size', [(12, 11), (6, 5)])  # more pixels than hidden channels (padded), fewer (not)
def test_gdfn_padding_and_split_halves_change_nothing(dim, bias, size):
    torch.manual_seed(0)
    ffn = GDFN(dim, 2.66, bias).double()
    assert ffn.padded % 16 == 0 and ffn.padded > ffn.hidden
    x = channels_last(torch.randn(2, dim, *size, dtype=torch.double))
    grads = []
    for fn in (ffn, lambda t: reference_gdfn(ffn, t)):
        ffn.zero_grad()
        out = fn(x)
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in ffn.parameters()]))
    (ours, ours_grads), (ref, ref_grads) = grads
    assert torch.allclose(ours, ref, atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(ours_grads, ref_grads))
    with torch.no_grad():  # inference gates in place
        assert torch.allclose(ffn(x), ref, atol=1e-12)


@pytest.mark.parametrize('kind', ['WithBias', 'BiasFree'])
def test_layer_norm_over_channels_in_both_layouts(kind):
    norm = layer_norm(8, kind).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 3, 5, dtype=torch.double)
    var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
    centred = x - mean if kind == 'WithBias' else x
    expected = centred / torch.sqrt(var + 1e-5) * norm.weight[:, None, None]
    if kind == 'WithBias':
        expected = expected + norm.bias[:, None, None]
    for layout in (x.contiguous(), channels_last(x)):
        assert torch.allclose(norm(layout), expected, atol=1e-12)


@pytest.mark.parametrize('size', [2, 6])  # 2×2: fewer pixels than output channels (the unfolded-patch matmul)
def test_upsample_matches_conv_and_keeps_gradients_channels_last(size):
    torch.manual_seed(size)
    up = Upsample(8).double()
    x = channels_last(torch.randn(2, 8, size, size, dtype=torch.double)).requires_grad_()
    ours = up(x)
    ref = F.pixel_shuffle(F.conv2d(x, up.body[0].weight, padding=1), 2)
    torch.testing.assert_close(ours, ref)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    got_x, got_w = x.grad, up.body[0].weight.grad
    x.grad, up.body[0].weight.grad = None, None
    ref.backward(grad)
    torch.testing.assert_close(got_x, x.grad)
    torch.testing.assert_close(got_w, up.body[0].weight.grad)
    assert got_x.is_contiguous(memory_format=torch.channels_last)
