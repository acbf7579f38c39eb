"""The decoding engine: batched candidate proposal, candidate hidden states and token emission.

One engine serves every face of the decoding process (the Gymnasium env, the vector env and the rollout
actors' fast path), so they produce the same trajectories for the same actions.

How one forward works. Every sequence of a batch owns one row of a shared KV cache. A forward feeds,
per row, some tokens to *commit* (a prompt, or the token just emitted) followed by a block of
*candidate* queries. A 4D attention mask lets each candidate attend to its row's committed prefix and
to itself only, and puts every candidate of a row at the same position, so the hidden states of all
candidates of all sequences come from ONE forward. Afterwards the candidate slots are cropped from the
cache; committed slots stay. The chosen candidate's last hidden state already gives the next-token
logits (lm_head of it), so emitting a token costs no forward of its own: it is committed at the front of
the next forward, which also computes the next step's candidates.

Rows advance on their own. A row with nothing to commit in a forward gets a masked padding slot, and
positions come from each row's count of real tokens, never from the cache length.

What the host reads. Everything a step decides per row (which rows emit, commit, query, finish) stays
a mask on the device; the host reads one small `StepStatus` per settle round (the widths of the next
forward, whether any row emits or finished), so a forward costs about two device-to-host syncs however
many rows the batch has. Query slots per forward are bounded by what the rows still need.

Not a per-candidate loop over one cache (as the reference does): transformers 5 mutates a shared
DynamicCache in place, so later candidates would attend to earlier ones; and it costs a forward each.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tokenalign.agents.chain import BASE_LOGIT_BOUND
from tokenalign.envs.attention import attention_mask
from tokenalign.envs.candidate_state import CANDIDATE_STATES, unit_rms
from tokenalign.envs.candidates import Candidates, SamplingConfig, propose
from tokenalign.envs.decode_batch import DecodeBatch, StepStatus
from tokenalign.envs.kv_cache import SlotCache
from tokenalign.lm.prompt_ids import prompt_token_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Decoding settings shared by every face of the engine."""

    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Candidate proposal (top-k / top-p / temperature / order)."""
    max_new_tokens: int = 512  # MARA train script
    """An episode ends after this many emitted tokens (or at EOS)."""
    candidate_block: int = 8
    """Lookahead mode: candidate states are computed lazily in blocks of this many ranks; 0 computes all at once."""
    candidate_state: Literal["lookahead", "context"] = "lookahead"  # MARA: lookahead
    """What the agent sees of a candidate (`envs/candidate_state.py`): lookahead, the LM's state of context +
    candidate (a query token per candidate looked at), or context, what the step's one forward returned (the
    context's state, the candidate's embedding, log q, rank: one LM forward per token, like sampling)."""

    def __post_init__(self) -> None:
        for name, low, hint in (("max_new_tokens", 1, ""), ("candidate_block", 0, " (0 = all candidates at once)")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}{hint}, got {value!r} ({type(value).__name__})")
        if self.candidate_state not in CANDIDATE_STATES:
            raise ValueError(f"candidate_state is {self.candidate_state!r}; choose one of {', '.join(CANDIDATE_STATES)}")


class DecodingEngine:
    """Batched MARA decoding over a frozen causal LM.

    The engine never decides: the caller applies actions (`apply`, one decision per awaiting row) or a
    policy decides a whole block at once (`tokenalign.envs.rollout`). `settle` runs the forwards needed
    until every live row awaits a decision, emitting single-survivor steps without one.
    """

    def __init__(self, *, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: EngineConfig,
                 dense_rows: bool | None = None) -> None:
        """`dense_rows`: compute every row where a step could select some (no host read of which); default on
        accelerators, where a sync costs more than the rows (`emit`)."""
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.base = model.base_model
        self.lm_head = model.get_output_embeddings()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.hidden_size = int(model.config.hidden_size)
        self.mode = CANDIDATE_STATES[config.candidate_state]
        self.state_size = self.mode.state_size(self.hidden_size)
        """Features of a candidate state (what agents read beside π_ref's accept logit)."""
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self.k = min(config.sampling.top_k, self.vocab_size)
        self.block = self.k if config.candidate_block == 0 else min(config.candidate_block, self.k)
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_id
        self.max_positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        self._softcap = getattr(model.config, "final_logit_softcapping", None)
        layer_types = set(getattr(model.config, "layer_types", None) or ())
        if layer_types - {"full_attention", "sliding_attention"}:
            raise ValueError(f"the LM has attention layers of types {sorted(layer_types)}; the engine supports full_attention and sliding_attention only")
        # Sliding-window layers (Gemma 3, ...) see only the last `sliding_window` positions: they get a mask of their own.
        self.sliding_window = getattr(model.config, "sliding_window", None) if "sliding_attention" in layer_types else None
        self._truncation_warned = False
        self.dense_rows = dense_rows if dense_rows is not None else self.device.type != "cpu"
        self.forwards = 0  # LM forwards run so far (what host reads and costs are counted per)
        self.forced_rounds = 0  # settle rounds that emitted a last candidate left, without a decision or a forward

    # ----------------------------------------------------------------------------------------- batches
    def start(self, prompts: list[str], *, keep_token_states: bool = False) -> DecodeBatch:
        """Begin decoding `prompts` (one row each) and settle until every row awaits a decision.

        With `keep_token_states` the batch keeps each row's state after its prompt and after every emitted
        token (`DecodeBatch.token_hidden`): what a score head on this LM reads, at no extra forward.
        """
        if not prompts:
            raise ValueError("start() needs at least one prompt")
        b = len(prompts)
        dev = self.device
        batch = DecodeBatch(
            cache=SlotCache(),
            attn=torch.zeros(b, 0, dtype=torch.bool, device=dev),
            n_real=torch.zeros(b, dtype=torch.long, device=dev),
            tokens=torch.full((b, self.config.max_new_tokens), self.pad_token_id, dtype=torch.long, device=dev),
            n_new=torch.zeros(b, dtype=torch.long, device=dev),
            cand=Candidates(
                token_ids=torch.zeros(b, self.k, dtype=torch.long, device=dev),
                logp=torch.full((b, self.k), float("-inf"), device=dev),
                count=torch.zeros(b, dtype=torch.long, device=dev),
                base_logit=torch.full((b, self.k), -BASE_LOGIT_BOUND, device=dev),
            ),
            cand_slots=torch.zeros(b, self.k + 1 if self.mode.queries else 1, self.hidden_size, device=dev),
            context_state=torch.zeros(b, self.hidden_size, device=dev),
            computed=torch.zeros(b, dtype=torch.long, device=dev),
            cursor=torch.zeros(b, dtype=torch.long, device=dev),
            commit=torch.zeros(b, 0, dtype=torch.long, device=dev),
            commit_valid=torch.zeros(b, 0, dtype=torch.bool, device=dev),
            needs_logits=torch.zeros(b, dtype=torch.bool, device=dev),
            done=torch.zeros(b, dtype=torch.bool, device=dev),
            row_ids=torch.arange(b, device=dev),
            token_hidden=(torch.zeros(b, self.config.max_new_tokens + 1, self.hidden_size, device=dev)
                          if keep_token_states else None),
        )
        self.restart_rows(batch, torch.arange(b, device=dev), prompts)
        return batch

    def restart_rows(self, batch: DecodeBatch, rows: torch.Tensor, prompts: list[str]) -> None:
        """Replace the sequences in `rows` by new `prompts` (the vector env's autoreset) and settle."""
        ids = self.encode(prompts)
        self._ensure_commit_width(batch, max(len(x) for x in ids))
        for row, prompt_ids in zip(rows.tolist(), ids):
            batch.commit[row] = self.pad_token_id
            batch.commit[row, : len(prompt_ids)] = torch.tensor(prompt_ids, device=self.device)
            batch.commit_valid[row] = False
            batch.commit_valid[row, : len(prompt_ids)] = True
        batch.attn[rows] = False
        batch.n_real[rows] = 0
        batch.n_new[rows] = 0
        batch.tokens[rows] = self.pad_token_id
        batch.computed[rows] = 0
        batch.cursor[rows] = 0
        batch.cand.count[rows] = 0
        batch.done[rows] = False
        batch.needs_logits[rows] = True
        self.settle(batch)

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt as the engine feeds it: an empty prompt is EOS, a long one keeps its end."""
        budget = None if self.max_positions is None else int(self.max_positions) - self.config.max_new_tokens
        if budget is not None and budget < 1:
            raise ValueError(
                f"max_new_tokens={self.config.max_new_tokens} leaves no room for a prompt in the model's "
                f"{self.max_positions} positions; lower max_new_tokens"
            )
        encoded = []
        for prompt in prompts:
            ids = prompt_token_ids(self.tokenizer, prompt)
            if budget is not None and len(ids) > budget:
                if not self._truncation_warned:
                    log.warning("prompts longer than %d tokens are cut from the left to fit the model's %d positions",
                                budget, self.max_positions)
                    self._truncation_warned = True
                start = ids[:1] if ids[0] == self.tokenizer.bos_token_id else []  # a cut prompt keeps its BOS
                ids = start + ids[len(ids) - budget + len(start):]
            encoded.append(ids)
        return encoded

    def compact(self, batch: DecodeBatch, keep: torch.Tensor) -> None:
        """Drop the rows not in `keep` (bool (B,)) from the batch, cache included."""
        index = keep.nonzero(as_tuple=True)[0]
        batch.cache.batch_select_indices(index)
        for name in ("attn", "n_real", "tokens", "n_new", "cand_slots", "context_state", "computed", "cursor", "commit",
                     "commit_valid", "needs_logits", "done", "row_ids"):
            setattr(batch, name, getattr(batch, name)[index])
        if batch.token_hidden is not None:
            batch.token_hidden = batch.token_hidden[index]
        batch.cand = batch.cand.select(index)

    # --------------------------------------------------------------------------------------- decisions
    def observe(self, batch: DecodeBatch) -> torch.Tensor:
        """(B, state_size + 1) observation of the candidate under decision in every row (meaningful where
        `awaiting`): its state and π_ref's accept logit (`observation`)."""
        rows = torch.arange(batch.size, device=self.device)
        return self.observation(batch, rows, batch.cursor.clamp(max=self.k - 1))

    def candidate_states(self, batch: DecodeBatch, rows: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """(..., state_size) states of candidate `ranks[...]` of row `rows[...]`, as the mode makes them."""
        return self.mode.states(batch, rows, ranks, output_embeddings=self.lm_head.weight)

    def observation(self, batch: DecodeBatch, rows: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
        """(..., state_size + 1) what the agent sees of candidate `ranks[...]` of row `rows[...]`: the candidate's
        state, then π_ref's accept logit (the agent's accept logit is it plus a learned residual)."""
        return torch.cat([self.candidate_states(batch, rows, ranks), batch.cand.base_logit[rows, ranks].unsqueeze(-1)],
                         dim=-1)

    def apply(self, batch: DecodeBatch, action: torch.Tensor) -> torch.Tensor:
        """Apply one decision per awaiting row (1 = accept) and settle. Returns (B,) rows whose step ended:
        they accepted, or rejected the second-to-last candidate so that the last one was emitted."""
        awaiting = batch.awaiting
        accept = awaiting & (action == 1)
        ends_step = accept | (awaiting & (batch.cursor + 2 == batch.cand.count))
        batch.cursor = torch.where(awaiting & ~accept, batch.cursor + 1, batch.cursor)
        self.emit(batch, accept, batch.cursor)
        self.settle(batch)
        return ends_step

    def emit(self, batch: DecodeBatch, rows: torch.Tensor, rank: torch.Tensor) -> None:
        """Emit candidate `rank` in each row of the bool mask `rows`. In lookahead mode its hidden state gives the
        next logits at once; in context mode the next forward, which commits the token, gives them.

        On an accelerator every row is computed and the result kept where `rows` says: reading which rows
        emit would cost a sync, and most live rows emit at every step. On a CPU, where a host read is free
        and work is proportional to rows, only the emitting rows are computed (`dense_rows`)."""
        index = torch.arange(batch.size, device=self.device) if self.dense_rows else rows.nonzero(as_tuple=True)[0]
        emits = rows[index]
        rank = rank[index].clamp(0, self.k - 1)
        token = batch.cand.token_ids[index, rank]
        slot = batch.n_new[index].clamp(max=self.config.max_new_tokens - 1)
        batch.tokens[index, slot] = torch.where(emits, token, batch.tokens[index, slot])
        n_new = batch.n_new[index] + emits.long()
        batch.n_new[index] = n_new
        finished = n_new >= self.config.max_new_tokens
        if self.eos_token_id is not None:
            finished = finished | (token == self.eos_token_id)
        finished = emits & finished
        batch.done[index] = batch.done[index] | finished
        going = emits & ~finished
        if self.mode.queries:
            chosen = batch.cand_hidden[index, rank]
            if batch.token_hidden is not None:
                batch.token_hidden[index, n_new] = torch.where(emits.unsqueeze(1), chosen,
                                                               batch.token_hidden[index, n_new])
            self._set_candidates(batch, index, going, chosen)
        else:
            # The next forward commits the token and gives the next logits. Score heads read the state after
            # every token, so with kept token states a finishing token is committed too.
            if batch.token_hidden is not None:
                going = emits
            batch.needs_logits[index] = batch.needs_logits[index] | going
        self._ensure_commit_width(batch, 1)
        batch.commit[index, 0] = torch.where(going, token, batch.commit[index, 0])
        batch.commit_valid[index, 0] = batch.commit_valid[index, 0] | going

    # ---------------------------------------------------------------------------------------- forwards
    def settle(self, batch: DecodeBatch, *, defer_forward: bool = False) -> StepStatus:
        """Run forwards until every live row awaits a decision; the last candidate left emits on its own.

        THE all-rejected rule, the one every face and mode shares: a candidate that is the last one left
        (a single survivor, or the last after every other was rejected) is emitted without a decision.
        π(last) = ∏_{j<last}(1 − p_j) then follows from the decisions alone, and π_ref reproduces q.
        `defer_forward`: while some row awaits a decision, a forward other rows need waits for it, so that
        rows that emit one step apart (one forced, one decided) share the next forward: the rollout fast
        path, which decides every awaiting row at once, keeps context mode at one forward per token step.
        Returns (and keeps in `batch.status`) the status read after the last round.
        """
        while True:
            status = batch.status = self.read_status(batch)
            if status.last_left:
                self.forced_rounds += 1
                self.emit(batch, self._last_left(batch), batch.cursor)
            elif status.forward and not (defer_forward and status.window > 0):
                self._forward(batch, status)
            else:
                return status

    def read_status(self, batch: DecodeBatch) -> StepStatus:
        """The batch's `StepStatus`, computed on the device and read by the host in one transfer."""
        if batch.size == 0:
            return StepStatus(last_left=False, commit_width=0, query_slots=0, fresh=False, dead_slots=0, done=0,
                              window=0)
        live_slots = batch.attn.any(dim=0)
        dead = torch.where(live_slots.any(), live_slots.int().argmax(), live_slots.numel()) if live_slots.numel() \
            else torch.zeros((), dtype=torch.long, device=self.device)
        need = torch.where(self._wants_block(batch), torch.clamp(batch.cand.count - batch.computed, max=self.block), 0)
        window = torch.where(batch.awaiting, torch.minimum(batch.computed, batch.cand.count - 1) - batch.cursor, 0)
        values = torch.stack([
            self._last_left(batch).any().long(),
            batch.commit_valid.sum(dim=1).max() if batch.commit_valid.numel() else dead.new_zeros(()),
            need.max(), batch.needs_logits.any().long(), dead.long(), batch.done.sum(), window.max(),
        ]).tolist()
        return StepStatus(last_left=bool(values[0]), commit_width=values[1], query_slots=values[2], fresh=bool(values[3]),
                          dead_slots=values[4], done=values[5], window=values[6])

    def _last_left(self, batch: DecodeBatch) -> torch.Tensor:
        return (~batch.done & ~batch.needs_logits & (batch.cursor == batch.cand.count - 1)
                & (batch.computed > batch.cursor))

    def _wants_block(self, batch: DecodeBatch) -> torch.Tensor:
        return ~batch.done & ~batch.needs_logits & (batch.cursor >= batch.computed) & (batch.cursor < batch.cand.count)

    @torch.no_grad()
    def _forward(self, batch: DecodeBatch, status: StepStatus) -> None:
        self.forwards += 1
        if status.dead_slots:
            batch.cache.drop_front(status.dead_slots)
            batch.attn = batch.attn[:, status.dead_slots:]
        b, t = batch.attn.shape
        c, q = status.commit_width, status.query_slots
        commit, commit_valid = batch.commit[:, :c], batch.commit_valid[:, :c]
        wants_block = self._wants_block(batch)
        lo = batch.computed
        ranks = lo.unsqueeze(1) + torch.arange(q, device=self.device)
        query_valid = wants_block.unsqueeze(1) & (ranks < batch.cand.count.unsqueeze(1))
        queries = batch.cand.token_ids.gather(1, ranks.clamp(max=self.k - 1))

        n_commit = commit_valid.sum(dim=1)
        commit_pos = batch.n_real.unsqueeze(1) + commit_valid.long().cumsum(dim=1) - 1
        query_pos = (batch.n_real + n_commit).unsqueeze(1).expand(b, q)
        positions = torch.cat([commit_pos.clamp(min=0), query_pos], dim=1)
        input_ids = torch.cat([commit, queries], dim=1)

        allowed = torch.zeros(b, c + q, t + c + q, dtype=torch.bool, device=self.device)
        allowed[:, :, :t] = batch.attn.unsqueeze(1)
        causal = torch.ones(c, c, dtype=torch.bool, device=self.device).tril()
        allowed[:, :c, t : t + c] = causal & commit_valid.unsqueeze(1)
        allowed[:, c:, t : t + c] = commit_valid.unsqueeze(1)
        # Every query sees itself: candidates need nothing else beyond the prefix, and padding queries
        # must see something or the softmax is NaN. Padding slots stay invisible to everyone else.
        diagonal = torch.arange(c + q, device=self.device)
        allowed[:, diagonal, t + diagonal] = True
        slot_pos = batch.attn.long().cumsum(dim=1) - 1  # a real slot's position: the row's real tokens before it
        mask = attention_mask(allowed, positions, torch.cat([slot_pos, positions], dim=1), dtype=self.dtype,
                              sliding_window=self.sliding_window)

        out = self.base(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                        cache=batch.cache, use_cache=True)
        hidden = out.last_hidden_state.to(self.device).float()  # an LM spread over GPUs ends on its last
        if q:
            batch.cache.crop(-q)

        if c:
            batch.attn = torch.cat([batch.attn, commit_valid], dim=1)
            batch.n_real += n_commit
            if status.fresh:  # rows that just committed their prompt take their first candidates from it
                # (and in context mode rows that just committed their last token take their next ones)
                fresh = batch.needs_logits
                every = torch.arange(b, device=self.device)
                last_commit = hidden[every, (n_commit - 1).clamp(min=0)]
                self._set_candidates(batch, every, fresh, last_commit)
                if batch.token_hidden is not None:
                    at = batch.n_new.clamp(max=self.config.max_new_tokens)
                    batch.token_hidden[every, at] = torch.where(fresh.unsqueeze(1), last_commit,
                                                                batch.token_hidden[every, at])
                batch.needs_logits = batch.needs_logits & ~fresh
            batch.commit_valid[:] = False
        if q:
            # Slots past a row's candidates write to the scratch column K.
            target = torch.where(query_valid, ranks, self.k)
            batch.cand_slots.scatter_(1, target.unsqueeze(-1).expand(b, q, self.hidden_size), hidden[:, c:])
            batch.computed = torch.where(wants_block, torch.minimum(lo + q, batch.cand.count), batch.computed)

    def new_cache(self) -> SlotCache:
        """An empty KV cache that keeps every slot of every layer, written in place (`kv_cache`). A config-built
        one would give sliding-window layers a rolling cache, which drops the slots the engine's masks, crops
        and restarts index."""
        return SlotCache()

    def next_token_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits from last hidden states (the LM head, with its final soft-cap when the model has one)."""
        logits = self.lm_head(hidden.to(self.dtype)).to(self.device).float()
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits

    def _set_candidates(self, batch: DecodeBatch, index: torch.Tensor, rows: torch.Tensor, hidden: torch.Tensor) -> None:
        """New candidates from the last hidden states `hidden` (one row per entry of `index`) where the bool mask
        `rows` says. Lookahead states are computed by later forwards; context states are all known at once."""
        batch.cand.assign_where(index, rows, propose(self.next_token_logits(hidden), self.config.sampling))
        batch.context_state[index] = torch.where(rows.unsqueeze(1), unit_rms(hidden), batch.context_state[index])
        computed = 0 if self.mode.queries else batch.cand.count[index]
        batch.computed[index] = torch.where(rows, computed, batch.computed[index])
        batch.cursor[index] = torch.where(rows, 0, batch.cursor[index])

    def _ensure_commit_width(self, batch: DecodeBatch, width: int) -> None:
        if batch.commit.shape[1] < width:
            pad = width - batch.commit.shape[1]
            batch.commit = torch.nn.functional.pad(batch.commit, (0, pad), value=self.pad_token_id)
            batch.commit_valid = torch.nn.functional.pad(batch.commit_valid, (0, pad), value=False)

