"""Speaker networks record their constructor arguments: ``build(spec(net))`` rebuilds them."""

import torch

from spksep_modules.configurable import build, spec
from spksep_modules.nnet.frozen import Frozen
from spksep_modules.speakers.ge2e import GE2E
from spksep_modules.speakers.rawnet2 import RawNet2

TOY = dict(window=2187, hop=1000, sinc_filters=4, sinc_length=11, block_channels=(4, 8),
           gru_units=8, gru_layers=2, embedding_dim=6, num_classes=3)


def same_architecture(a, b):
    assert type(a) is type(b)
    shapes = {k: v.shape for k, v in a.state_dict().items()}
    assert shapes == {k: v.shape for k, v in b.state_dict().items()}


def test_rawnet2_round_trips():
    net = RawNet2(**TOY)
    description = spec(net)
    assert description == {"class": "spksep_modules.speakers.rawnet2.RawNet2",
                           "args": {**TOY, "block_channels": [4, 8]}}
    rebuilt = build(description)
    same_architecture(net, rebuilt)
    assert spec(rebuilt) == description and rebuilt.hop == 1000
    rebuilt.load_state_dict(net.state_dict())
    wav = torch.randn(2, 3000)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval().embed(wav), net.eval().embed(wav))


def test_ge2e_round_trips():
    net = GE2E(rate=2.0, min_coverage=0.5)
    description = spec(net)
    assert description["args"] == {"rate": 2.0, "min_coverage": 0.5, "level_dbfs": -30.0}
    rebuilt = build(description)
    same_architecture(net, rebuilt)
    assert (rebuilt.rate, rebuilt.min_coverage, rebuilt.level_dbfs) == (2.0, 0.5, -30.0)


def test_a_description_older_than_an_argument_rebuilds_what_it_described():
    # written before GE2E scaled its input: the raw-level network a model was trained with
    old = {"class": "spksep_modules.speakers.ge2e.GE2E", "args": {"rate": 1.3, "min_coverage": 0.75}}
    assert build(old).level_dbfs is None
    assert build({**old, "args": {**old["args"], "level_dbfs": -20.0}}).level_dbfs == -20.0


def test_frozen_wrapper_round_trips_with_its_network():
    frozen = Frozen(RawNet2(**TOY), net_rate=16000, input_rate=8000)
    description = spec(frozen)
    assert description["class"] == "spksep_modules.nnet.frozen.Frozen"
    assert description["args"]["net"] == spec(frozen.net)
    assert (description["args"]["net_rate"], description["args"]["input_rate"]) == (16000, 8000)
    rebuilt = build(description)
    same_architecture(frozen, rebuilt)
    assert isinstance(rebuilt.net, RawNet2) and rebuilt.embedding_dim == 6
    assert not rebuilt.net.training and not any(p.requires_grad for p in rebuilt.parameters())
    assert spec(build(spec(Frozen(GE2E(), 16000, 16000))))["args"]["net"] == spec(GE2E())
