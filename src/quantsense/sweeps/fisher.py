"""Fisher-weighted weight errors: every (unit, format)'s mean KL predicted from one forward and backward pass over
the data, with no evaluation of the unit quantized.

For a small change ``dz`` of the logits, ``KL(p || softmax(z + dz)) ~ 1/2 dz' F dz`` with ``F = diag(p) - p p'``; and
for a label ``y`` drawn from the model's own ``p``, ``g = e_y - p`` (the gradient of ``log p_y``) has ``E[g g'] = F``.
Back-propagated to a linear's output ``o_t = W x_t`` (token ``t``), the same holds for ``do_t = dW x_t``:
``KL_t ~ 1/2 E[(g_t . dW x_t)^2]``. With the quantization errors of different weights independent and of zero mean,
that is ``1/2 sum_ij g_ti^2 x_tj^2 dW_ij^2``, so the mean KL per token is ``1/2 sum_ij F_ij dW_ij^2`` with
``F_ij = mean_t g_ti^2 x_tj^2``: the diagonal empirical Fisher of the weights (as SqueezeLLM weighs its rounding).
It knows what the importance matrix alone does not (``mean_t x_tj^2``, llama.cpp's per-column weight): how much
each output row of each tensor matters to the logits, which differs by orders of magnitude between tensors.

The token embedding's rows are weighted by the gradients at the positions that look them up; an output head tied
to it adds its own products' term (the two perturbations taken as independent). The runtime's rounding ``r`` of a
linear's inputs (:meth:`~quantsense.quantization.formats.base.WeightFormat.activation_rounding`) adds
``1/2 mean_t sum_i g_ti^2 (W (r(x_t) - x_t))_i^2``, collected in the same pass: the diagonal of the output-side
Fisher only, an approximation (``r(x) - x`` is one vector shared by every output, so the cross terms need not
vanish; ``(g_t . W (r(x_t) - x_t))^2`` would estimate them, untried), within 30 % in the tests.

Not :mod:`quantsense.sweeps.proxies`' ``fisher`` proxy (``quantsense proxies``), which squares per-example weight
gradients of the true label's loss, one example at a time: an estimate of the loss's increase, not of the KL.

For a format that quantizes each row alone (ggml's), a prediction quantizes only a row sample (:class:`RowSample`):
the rows with the most Fisher mass exactly, a stride of the others standing for them; the sampled rows' errors are
what the whole tensor's quantization gives them, so only the sum over rows is estimated (within a few percent of the
whole tensor's, at about a third of the quantization's cost).

Memory: one float32 matrix per tensor (the model's weights again, in float32) and each linear's inputs for the batch
being run.

A loss model fitted on a few measured units (:mod:`quantsense.sweeps.loss_model`) turns these into losses; the pairs
where a plan hinges are measured (:mod:`quantsense.mixed_precision.refine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quantsense.errors import QuantsenseError


EXACT_ROW_SHARE = 8  # the 1/8 of a tensor's rows with the most Fisher mass enter a sampled prediction exactly
ROW_STRIDE = 4  # and every 4th of its other rows with any mass, standing for the rows between them


@dataclass
class RowSample:
    """Output rows of one weight whose quantization errors stand for all of its rows, for a format that quantizes each
    row alone (:attr:`~quantsense.quantization.formats.base.WeightFormat.rows_independent`): the sampled rows'
    errors are exactly what quantizing the whole tensor gives them, so only the sum over rows is estimated."""

    index: torch.Tensor  # rows, in the order taken
    count: torch.Tensor  # float64: how many rows each stands for (1 for the rows taken exactly)
    transposed: bool = False  # the weight is stored (in, out) (Conv1D): its output rows are columns


def row_sample(
    row_mass: torch.Tensor, exact_share: int = EXACT_ROW_SHARE, stride: int = ROW_STRIDE, transposed: bool = False
) -> RowSample:
    """A stratified sample of rows by ``row_mass`` (each row's summed Fisher): the heaviest ``1/exact_share`` exactly,
    every ``stride``-th of the others that have any mass, each standing for its share of them; rows without mass add
    nothing to a prediction and are left out. Deterministic (ties broken by row number)."""
    mass = row_mass.double()
    order = torch.argsort(-mass, stable=True)
    heavy = order[: len(mass) // exact_share]
    rest = torch.sort(order[len(heavy) :]).values
    heavy = heavy[mass[heavy] > 0]
    rest = rest[mass[rest] > 0]
    taken = rest[stride // 2 :: stride]
    share = len(rest) / len(taken) if len(taken) else 0.0
    return RowSample(
        torch.cat([heavy, taken]),
        torch.cat([torch.ones(len(heavy), dtype=torch.float64), torch.full((len(taken),), share, dtype=torch.float64)]),
        transposed,
    )


@dataclass
class FisherPass:
    fisher: dict[str, torch.Tensor]  # module name -> sum over rows of g^2 x^2, in the weight's own layout
    rounding: dict[tuple[str, object], float]  # (module name, rounding) -> sum over rows of sum_i g^2 (W (r(x) - x))^2
    rows: int  # logit rows (scored positions, times the label draws)

    def predicted_kl(
        self,
        names: tuple[str, ...],
        errors: dict[str, torch.Tensor],
        rounding=None,
        samples: dict[str, RowSample] | None = None,
    ) -> float:
        """Mean KL per scored row predicted for these modules with weight errors ``errors`` (name -> ``W - Q(W)``)
        and inputs rounded by ``rounding`` (or not). With ``samples`` (name -> sample), a module's error holds only
        its sample's rows (``W[index]``, or ``W[:, index]`` when transposed)."""
        total = 0.0
        for n in names:
            if n not in self.fisher:  # a module no gradient reached (e.g. an expert never routed to) adds nothing
                continue
            fisher, error = self.fisher[n], errors[n].float()
            sample = (samples or {}).get(n)
            if sample is None:
                total += float(torch.dot(fisher.reshape(-1), error.pow(2).reshape(-1)))
                continue
            fisher, error = (fisher.t(), error.t()) if sample.transposed else (fisher, error)
            total += float((fisher[sample.index] * error.pow(2)).sum(dim=1).double() @ sample.count)
        if rounding is not None:
            total += sum(self.rounding.get((n, rounding), 0.0) for n in names)
        return 0.5 * total / self.rows

    def row_sample(self, name: str, transposed: bool) -> RowSample | None:
        """The rows of ``name`` a prediction quantizes (:func:`row_sample`), or None when no gradient reached it."""
        if name not in self.fisher:
            return None
        fisher = self.fisher[name].t() if transposed else self.fisher[name]
        return row_sample(fisher.sum(dim=1), transposed=transposed)


def check_not_streamed(units) -> None:
    """The Fisher estimate back-propagates through every block at once: refused for a streamed model (its blocks are
    read from their files one at a time, :mod:`quantsense.models.streaming`)."""
    if units.stream is not None:
        raise QuantsenseError(
            "the Fisher estimate back-propagates through every block at once, which a model streamed from its files "
            "(--stream-blocks) cannot hold in memory: use --estimate weight-error, or --stream-blocks off"
        )


def fisher_pass(
    model,
    units,
    names: list[str],
    batches,
    kwargs_for,
    roundings=(),
    draws: int = 1,
    seed: int = 0,
    device: str = "cpu",
) -> FisherPass:
    """One forward pass per batch and ``draws`` backward passes (labels drawn from the model's own distribution,
    seeded), accumulating each module's diagonal Fisher (``names``: module names of ``units``, a
    :class:`~quantsense.models.units.UnitMap`)."""
    check_not_streamed(units)
    fisher: dict[str, torch.Tensor] = {}
    rounding: dict[tuple[str, object], float] = {}
    inputs: dict[str, torch.Tensor] = {}  # the embedding's output of the batch running
    embedding = model.get_input_embeddings()
    handles = []
    wanted = {}
    for name in names:
        unit = units.get(name)
        for module in [unit.module, *unit.tied_modules]:
            wanted.setdefault(id(module), (module, []))[1].append(name)

    def add(name: str, value: torch.Tensor) -> None:
        if name in fisher:
            fisher[name].add_(value)
        else:
            fisher[name] = value

    def linear_hook(module, owners):
        def hook(_module, args, output):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            if not output.requires_grad:
                return None
            out_shape = output.shape

            def on_grad(grad):
                g2 = grad.detach().float().reshape(-1, out_shape[-1]).pow(2)
                for name in owners:  # a tied output head's products weigh the embedding matrix it shares
                    unit = units.get(name)
                    found = g2.t() @ x.pow(2)
                    add(name, found.t() if unit.transposed else found)  # Conv1D-style (in, out) storage
                    weight = unit.weight.detach().float() if roundings else None
                    weight = weight.t() if roundings and unit.transposed else weight
                    for r in roundings:
                        delta = (r(x) - x) @ weight.t()
                        rounding[(name, r)] = rounding.get((name, r), 0.0) + float((g2 * delta.pow(2)).sum())

            output.register_hook(on_grad)
            return None

        return hook

    def embedding_hook(_module, args, output):
        ids = args[0].reshape(-1)
        leaf = output.detach().requires_grad_(True)  # the graph starts here: no weight gradients are computed
        inputs["leaf"] = leaf

        def on_grad(grad):
            g2 = grad.detach().float().reshape(ids.numel(), -1).pow(2)
            for name in wanted.get(id(embedding), (None, []))[1]:
                table = torch.zeros_like(units.get(name).weight, dtype=torch.float32)  # summed apart, then added: the
                table.index_add_(0, ids, g2)  # same rounding whatever the tied head added first
                add(name, table)

        leaf.register_hook(on_grad)
        return leaf

    handles.append(embedding.register_forward_hook(embedding_hook))
    for module, owners in wanted.values():
        if module is not embedding:
            handles.append(module.register_forward_hook(linear_hook(module, owners)))
    rows = 0
    generator = torch.Generator().manual_seed(seed)
    try:
        with torch.enable_grad():
            for batch in batches:
                out = model(**{k: v.to(device) for k, v in batch.inputs.items()}, **kwargs_for(model, batch))
                logits = out.logits
                logits = logits[0, :-1] if logits.dim() == 3 else logits  # an LM window's last row predicts nothing
                logp = torch.log_softmax(logits.float(), dim=-1)
                probs = logp.detach().exp().cpu()
                for draw in range(draws):
                    labels = torch.multinomial(probs, 1, generator=generator)[:, 0].to(logp.device)
                    picked = logp.gather(1, labels[:, None]).sum()
                    torch.autograd.grad(picked, [inputs["leaf"]], retain_graph=draw < draws - 1)
                rows += logp.shape[0] * draws
                del out, logits, logp, probs  # this batch's graph and saved inputs go before the next forward
    finally:
        for handle in handles:
            handle.remove()
    return FisherPass(fisher, rounding, rows)
