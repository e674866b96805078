"""LiteMedSAM's box decoder split in two, for the ONNX Runtime path: what depends on the slice alone, once per
slice, and what depends on the box, once per box.

SAM's mask decoder (which LiteMedSAM keeps) starts its two-way transformer by projecting the 64x64 image
tokens for the first cross-attentions: keys and values of the token-to-image attention, queries of the
image-to-token attention. In the first layer those tokens are still the image embedding (plus the constant
no-mask embedding and positional encoding), so the three projections are the same for every box on a slice.
An include correction decodes 10-25 boxes on a handful of slices: computed once per slice they cost a fifth
of a decode each time (bench/encoder_variants.py measures both decoders). Everything else follows the
network's own modules and weights; only the order of the work changes, and `test_litemedsam_runtimes.py`
holds the split decoder to the reference one (`_box_decoder`) within float rounding.

Further savings that change nothing in the output but float rounding:
- the later attentions between the 4096 image tokens and the 7 prompt tokens never project the image tokens:
  each projection is moved onto the tokens' side instead (`_tokens_attend_image`, `_image_attends_tokens`),
  which is 2-5 times less work per attention; the final attention computes only the two tokens read after it;
- only the single-mask output (mask token 0, what a box prompt uses) is computed, and the upscaling runs as
  matrix products in sub-pixel layout with one fused layer norm (`_upscaled_logits`).
Together about 0.73 billion multiply-adds per box instead of 1.34 (the upscaling is 0.40 of them).
Torch modules only, for export (and for the test); torch is imported by whoever builds them.
"""

from __future__ import annotations

import math
from typing import Any  # the vendored network's modules are untyped

import torch
from torch import nn
from torch.nn import functional as F


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(B, N, C) -> (B, heads, N, C / heads)."""
    b, n, c = x.shape
    return x.reshape(b, n, n_heads, c // n_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, N, c) -> (B, N, heads * c)."""
    b, h, n, c = x.shape
    return x.transpose(1, 2).reshape(b, n, h * c)


def _attend(attention: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product attention of already projected, head-split q, k, v, then the layer's output projection."""
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    return attention.out_proj(_merge_heads(weights @ v))


def _attention(attention: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One of SAM's attention layers on unprojected inputs (the same arithmetic as the layer's own forward)."""
    n = attention.num_heads
    return _attend(
        attention,
        _heads(attention.q_proj(q), n),
        _heads(attention.k_proj(k), n),
        _heads(attention.v_proj(v), n),
    )


class SlicePart(nn.Module):
    """(1, 256, 64, 64) image embedding -> the box-independent start of the decoder: the image tokens (with the
    no-mask embedding added) and the first layer's three image-side projections, split into heads (in the
    order of `litemedsam_net.SLICE_OUTPUTS`)."""

    def __init__(self, prompt_encoder: Any, mask_decoder: Any) -> None:
        super().__init__()
        self.first: Any = mask_decoder.transformer.layers[0]
        self.no_mask: Any = prompt_encoder.no_mask_embed
        self.register_buffer("image_pe", prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous())

    def forward(self, embedding: torch.Tensor):
        tokens = (embedding + self.no_mask.weight.reshape(1, -1, 1, 1)).flatten(2).transpose(1, 2)
        t2i, i2t = self.first.cross_attn_token_to_image, self.first.cross_attn_image_to_token
        with_pe = tokens + self.image_pe
        return (
            tokens,
            _heads(t2i.k_proj(with_pe), t2i.num_heads),
            _heads(t2i.v_proj(tokens), t2i.num_heads),
            _heads(i2t.q_proj(with_pe), i2t.num_heads),
        )


def _head_weights(linear: Any, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight as (heads, c / heads, C) and its bias as (heads, c / heads): row blocks per head."""
    out_dim, in_dim = linear.weight.shape
    return linear.weight.reshape(n_heads, out_dim // n_heads, in_dim), linear.bias.reshape(n_heads, -1)


def _tokens_attend_image(attention: Any, q: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor) -> torch.Tensor:
    """A token-to-image attention layer, with the image-side projections moved onto the few tokens.

    A head's score q . (Wk x + bk) is (Wk^T q) . x + q . bk, and since a head's attention weights sum to one, its
    output sum a (Wv x + bv) is Wv (sum a x) + bv. So each of the T tokens' queries is taken back to the 256
    image channels and the 4096 image tokens enter only two (H*T x 256)-by-(256 x 4096) products, instead of
    two 4096-token projections: about 2*H*T/256 of their work for T tokens (H = 8 heads). The same sums in
    another order (float rounding apart)."""
    n = attention.num_heads
    wq_k, bk = _head_weights(attention.k_proj, n)
    wv, bv = _head_weights(attention.v_proj, n)
    q = _heads(attention.q_proj(q), n)  # (B, H, T, d)
    b, _, t, d = q.shape
    q_image = torch.einsum("bhtd,hdc->bhtc", q, wq_k).reshape(b, n * t, -1)  # queries in image channels
    bias = (q * bk[None, :, None, :]).sum(-1).reshape(b, n * t, 1)  # the same for every image token
    weights = torch.softmax((q_image @ image_k.transpose(1, 2) + bias) / math.sqrt(d), dim=-1)
    mixed = (weights @ image_v).reshape(b, n, t, -1)  # each head's weighted mean of the image tokens
    values = torch.einsum("bhtc,hdc->bhtd", mixed, wv) + bv[None, :, None, :]
    return attention.out_proj(_merge_heads(values))


def _image_attends_tokens(
    attention: Any, image_q: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor, queries: torch.Tensor | None = None
) -> torch.Tensor:
    """An image-to-token attention layer, with the image-side projections moved onto the few tokens.

    A head's score (Wq x + bq) . k is x . (Wq^T k) + bq . k, and the output projection of a head's weighted sum
    of values is the weighted sum of the projected values (Wo_h v): 4096 image tokens meet H*T = 56 vectors of
    256 channels twice, instead of being projected twice. `queries`: the image's queries already projected
    (B, H, 4096, d), as the slice part gives them for the first layer; else `image_q` (B, 4096, 256) is
    used the folded way."""
    n = attention.num_heads
    keys = _heads(attention.k_proj(k), n)  # (B, H, T, d)
    values = _heads(attention.v_proj(v), n)
    b, _, t, d = keys.shape
    if queries is not None:
        scores = (queries @ keys.transpose(-2, -1)).permute(0, 2, 1, 3)  # (B, 4096, H, T)
    else:
        assert image_q is not None
        wq, bq = _head_weights(attention.q_proj, n)
        keys_image = torch.einsum("bhtd,hdc->bhtc", keys, wq).reshape(b, n * t, -1)
        bias = (keys * bq[None, :, None, :]).sum(-1).reshape(b, 1, n * t)
        scores = (image_q @ keys_image.transpose(1, 2) + bias).reshape(b, -1, n, t)
    weights = torch.softmax(scores / math.sqrt(d), dim=-1).reshape(b, -1, n * t)
    wo = attention.out_proj.weight.reshape(-1, n, d)  # (C, H, d): the columns each head's output meets
    projected = torch.einsum("bhtd,chd->bhtc", values, wo).reshape(b, n * t, -1)
    return weights @ projected + attention.out_proj.bias


def _upscaled_logits(upscaling: Any, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
    """(N, 4096, 256) image tokens and (N, 32) mask weights -> (N, 1, 256, 256) logits: SAM's two 2x2 stride-2
    transposed convolutions, channel LayerNorm and GELUs, then the per-pixel product with the mask weights.

    A 2x2 stride-2 transposed convolution maps each input pixel to its own 2x2 output block, and everything
    after it works per pixel, so each stays a plain matrix product on the pixel's channels: the output pixels
    stay grouped by the token they come from (sub-pixel layout) and are put in image order once, on the
    single-channel logits, instead of rearranging 64- and 32-channel maps (measured ~15% of a decode)."""
    conv0, norm, act0, conv1, act1 = upscaling
    n, tokens, _ = keys.shape
    side = int(math.isqrt(tokens))
    w0 = conv0.weight.permute(0, 2, 3, 1).reshape(conv0.weight.shape[0], -1)  # (in, 2*2*out): columns (a, b, o)
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.weight.shape[0], -1)
    c0, c1 = conv0.weight.shape[1], conv1.weight.shape[1]
    # each bias repeats over the 2x2 block, so it joins its matrix product (one fused GEMM each)
    x = (keys @ w0 + conv0.bias.repeat(4)).reshape(n, tokens * 4, c0)
    x = act0(F.layer_norm(x, (c0,), norm.weight, norm.bias, norm.eps))
    x = act1((x @ w1 + conv1.bias.repeat(4)).reshape(n, tokens * 16, c1))
    logits = (x @ hyper.unsqueeze(2)).reshape(n, side, side, 2, 2, 2, 2)  # (token row, col, a0, b0, a1, b1)
    return logits.permute(0, 1, 3, 5, 2, 4, 6).reshape(n, 1, side * 4, side * 4)


class BoxPart(nn.Module):
    """The slice part's outputs and (N, 1, 4) boxes (256-pixel coordinates) -> (N, 1, 256, 256) mask logits and
    (N, 1) IoU estimates: SAM's decoder with `multimask_output=False`."""

    def __init__(self, prompt_encoder: Any, mask_decoder: Any) -> None:
        super().__init__()
        self.prompt_encoder: Any = prompt_encoder
        self.decoder: Any = mask_decoder
        self.register_buffer("image_pe", prompt_encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous())

    def forward(self, tokens, t2i_keys, t2i_values, i2t_queries, boxes):
        d = self.decoder
        layer0, layer1 = d.transformer.layers
        sparse, _ = self.prompt_encoder(points=None, boxes=boxes, masks=None)
        fixed = torch.cat([d.iou_token.weight, d.mask_tokens.weight], dim=0)
        prompt = torch.cat([fixed.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)

        # layer 0: the image side is still the slice's (its projections come from the slice part)
        queries = layer0.norm1(_attention(layer0.self_attn, prompt, prompt, prompt))
        t2i = layer0.cross_attn_token_to_image
        queries = layer0.norm2(
            queries + _attend(t2i, _heads(t2i.q_proj(queries + prompt), t2i.num_heads), t2i_keys, t2i_values)
        )
        queries = layer0.norm3(queries + layer0.mlp(queries))
        i2t = layer0.cross_attn_image_to_token
        keys = layer0.norm4(tokens + _image_attends_tokens(i2t, None, queries + prompt, queries, i2t_queries))

        # layer 1 and the final attention, as in the network
        q = queries + prompt
        queries = layer1.norm1(queries + _attention(layer1.self_attn, q, q, queries))
        queries = layer1.norm2(
            queries
            + _tokens_attend_image(layer1.cross_attn_token_to_image, queries + prompt, keys + self.image_pe, keys)
        )
        queries = layer1.norm3(queries + layer1.mlp(queries))
        keys = layer1.norm4(
            keys
            + _image_attends_tokens(layer1.cross_attn_image_to_token, keys + self.image_pe, queries + prompt, queries)
        )
        # the final attention: only the IoU token and mask token 0 are read after it
        final = d.transformer.final_attn_token_to_image
        queries = queries[:, :2]
        queries = d.transformer.norm_final_attn(
            queries + _tokens_attend_image(final, queries + prompt[:, :2], keys + self.image_pe, keys)
        )

        # upscaling and the single-mask output (mask token 0), in sub-pixel layout (see `_upscaled_logits`)
        hyper = d.output_hypernetworks_mlps[0](queries[:, 1])
        logits = _upscaled_logits(d.output_upscaling, keys, hyper)
        iou = d.iou_prediction_head(queries[:, 0])[:, :1]
        return logits, iou
