import torch
from torch import nn

from bitconv.train import super_weights as sw


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.up_proj = nn.Linear(4, 6, bias=False)
        self.down_proj = nn.Linear(6, 4, bias=False)

    def forward(self, x):
        return self.down_proj(self.up_proj(x))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = MLP()


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([Layer(), Layer()])

    def forward(self, input_ids):
        x = input_ids
        for layer in self.layers:
            x = x + layer.mlp(x)
        return x


def test_the_spiking_channel_times_its_weight_is_found_and_zeroing_it_is_undone():
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        for layer in model.layers:
            layer.mlp.up_proj.weight.normal_(0, 0.1)
            layer.mlp.down_proj.weight.normal_(0, 0.1)
        model.layers[1].mlp.up_proj.weight[3] = 5.0  # channel 3 of layer 1's down_proj input spikes
        model.layers[1].mlp.down_proj.weight[2, 3] = 0.5  # the weight that carries it to output 2
    batches = [{"input_ids": torch.ones(2, 5, 4)}]
    found = sw.find_super_weights(model, batches, 1)
    assert [(f.tensor, f.row, f.col) for f in found] == [("layers.1.mlp.down_proj.weight", 2, 3)]
    assert found[0].input_max > 10 and found[0].value == 0.5
    idx = sw.as_outlier_indices(found, sw.linear_shapes(model, {"layers.1.mlp.down_proj.weight"}))
    assert idx["layers.1.mlp.down_proj.weight"].tolist() == [2 * 6 + 3]
    before = model(torch.ones(1, 4))
    with sw.zeroed(model, found):
        assert model.layers[1].mlp.down_proj.weight[2, 3].item() == 0.0
        assert not torch.allclose(model(torch.ones(1, 4)), before)
    assert torch.equal(model(torch.ones(1, 4)), before)


def test_only_mlp_output_projections_are_candidates():
    model = Tiny()
    names = set(sw.mlp_output_modules(model))
    assert names == {"layers.0.mlp.down_proj.weight", "layers.1.mlp.down_proj.weight"}
    assert set(sw.mlp_output_modules(model, candidates={"layers.0.mlp.down_proj.weight"})) == {
        "layers.0.mlp.down_proj.weight"}
