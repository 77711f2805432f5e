"""What SpeechBrain's own separation recipes leave in their output folder, written here by
SpeechBrain itself at toy sizes (shared by tests/models/test_speechbrain_training_folder.py
and tests/test_recipe.py):

    hyperparams.yaml        the recipe's yaml, overrides applied and references resolved,
                            as ``sb.create_experiment_directory`` writes it
    save/CKPT+<date>/       one per epoch, by the recipe's ``Checkpointer``:
        encoder.ckpt masknet.ckpt decoder.ckpt counter.ckpt lr_scheduler.ckpt
        optimizer.ckpt (the Brain adds it)  CKPT.yaml (meta: si-snr, the validation loss)

The recipe yamls keep the keys and modules of SpeechBrain's
``recipes/WSJ0Mix/separation/hparams/convtasnet.yaml`` and
``recipes/LibriMix/separation/hparams/sepformer-libri2mix.yaml`` (at 16 kHz, the demo
data's rate), with tiny sizes.
"""

import copy
import datetime
import os

import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references

COMMON = """
seed: 1234
__set_seed: !apply:speechbrain.utils.seed_everything [!ref <seed>]
data_folder: !PLACEHOLDER
experiment_name: {name}
output_folder: !ref results/<experiment_name>/<seed>
train_log: !ref <output_folder>/train_log.txt
save_folder: !ref <output_folder>/save
train_data: !ref <save_folder>/libri2mix_train-360.csv
skip_prep: False

precision: fp32
num_spks: 2
noprogressbar: False
save_audio: False
sample_rate: 16000

N_epochs: 200
batch_size: 1
lr: 0.00015
clip_grad_norm: 5
loss_upper_lim: 999999
limit_training_signal_len: False
training_signal_len: 32000000
dynamic_mixing: False
use_speedperturb: True
speed_changes: [95, 100, 105]
speed_perturb: !new:speechbrain.augment.time_domain.SpeedPerturb
    orig_freq: !ref <sample_rate>
    speeds: !ref <speed_changes>
threshold_byloss: True
threshold: -30

N_encoder_out: 16
kernel_size: 16
kernel_stride: 8

dataloader_opts:
    batch_size: !ref <batch_size>
    num_workers: 3

Encoder: !new:speechbrain.lobes.models.dual_path.Encoder
    kernel_size: !ref <kernel_size>
    out_channels: !ref <N_encoder_out>

{masknet}
Decoder: !new:speechbrain.lobes.models.dual_path.Decoder
    in_channels: !ref <N_encoder_out>
    out_channels: 1
    kernel_size: !ref <kernel_size>
    stride: !ref <kernel_stride>
    bias: False

optimizer: !name:torch.optim.Adam
    lr: !ref <lr>
    weight_decay: 0

loss: !name:speechbrain.nnet.losses.get_si_snr_with_pitwrapper

lr_scheduler: !new:speechbrain.nnet.schedulers.ReduceLROnPlateau
    factor: 0.5
    patience: 2
    dont_halve_until_epoch: 85

epoch_counter: !new:speechbrain.utils.epoch_loop.EpochCounter
    limit: !ref <N_epochs>

modules:
    encoder: !ref <Encoder>
    decoder: !ref <Decoder>
    masknet: !ref <MaskNet>

checkpointer: !new:speechbrain.utils.checkpoints.Checkpointer
    checkpoints_dir: !ref <save_folder>
    recoverables:
        encoder: !ref <Encoder>
        decoder: !ref <Decoder>
        masknet: !ref <MaskNet>
        counter: !ref <epoch_counter>
        lr_scheduler: !ref <lr_scheduler>

train_logger: !new:speechbrain.utils.train_logger.FileTrainLogger
    save_file: !ref <train_log>
"""

CONVTASNET = COMMON.replace("{name}", "convtasnet").replace("{masknet}", """
MaskNet: !new:speechbrain.lobes.models.conv_tasnet.MaskNet
    N: 16
    B: 8
    H: 16
    P: 3
    X: 2
    R: 1
    C: !ref <num_spks>
    norm_type: 'gLN'
    causal: True
    mask_nonlinear: 'relu'
""")

# The recipe's intra- and inter-chunk transformers ({block}: SBtfintra, SBtfinter), alike.
TRANSFORMER_BLOCK = """
{block}: !new:speechbrain.lobes.models.dual_path.SBTransformerBlock
    num_layers: 1
    d_model: 16
    nhead: 2
    d_ffn: 32
    dropout: 0
    use_positional_encoding: True
    norm_before: True
"""

# The sizes of tests/test_recipe.py's SF_SIZES, so that sepformer.yaml can start from it.
SEPFORMER = COMMON.replace("{name}", "sepformer-libri2mix").replace("{masknet}", "".join(
    TRANSFORMER_BLOCK.replace("{block}", block) for block in ("SBtfintra", "SBtfinter")) + """
MaskNet: !new:speechbrain.lobes.models.dual_path.Dual_Path_Model
    num_spks: !ref <num_spks>
    in_channels: !ref <N_encoder_out>
    out_channels: !ref <N_encoder_out>
    num_layers: 1
    K: 10
    intra_model: !ref <SBtfintra>
    inter_model: !ref <SBtfinter>
    norm: ln
    linear_layer_after_inter_intra: False
    skip_around_intra: True
""")


def write_training_folder(folder, recipe=CONVTASNET, losses=(-5.0, -4.0), seed=0):
    """Run the bookkeeping of SpeechBrain's recipe into ``folder``: its ``hyperparams.yaml``
    and one checkpoint per entry of ``losses`` (the validation loss, negative SI-SNR), the
    weights moved a little between epochs, kept as the recipe keeps them
    (``save_and_keep_only(min_keys=["si-snr"])``: the best and the latest).

    Returns ``(hparams, best)``: what the yaml built, and a copy of its ``modules`` with the
    weights of the best epoch (lowest loss), the ones SpeechBrain's recipe tests.
    """
    folder = str(folder)
    overrides = {"data_folder": "/data/Libri2Mix", "output_folder": folder}
    hp = load_hyperpyyaml(recipe, overrides)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "hyperparams.yaml"), "w", encoding="utf-8") as f:
        # sb.create_experiment_directory's header, then the resolved yaml
        f.write(f"# Generated {datetime.date.today()} from:\n# /speechbrain/recipes/train.py\n"
                "# yamllint disable\n")
        f.write(resolve_references(recipe, overrides).getvalue())
    torch.manual_seed(seed)
    modules = torch.nn.ModuleDict(hp["modules"])
    for layer in modules.modules():  # the recipe's reset_layer_recursively
        if layer is not modules and hasattr(layer, "reset_parameters"):
            layer.reset_parameters()
    hp["checkpointer"].add_recoverable("optimizer", hp["optimizer"](modules.parameters()))
    best = None
    for epoch, loss in enumerate(losses, start=1):
        if epoch > 1:  # an epoch of training, in miniature
            with torch.no_grad():
                for p in modules.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        hp["epoch_counter"].current = epoch
        hp["checkpointer"].save_and_keep_only(meta={"si-snr": loss}, min_keys=["si-snr"])
        if best is None or loss < best[0]:
            best = (loss, copy.deepcopy(modules).eval())
    return hp, best[1]


def speechbrain_separate(modules, num_spks, mix):
    """The recipe's ``compute_forward`` on its modules: ``mix [batch, time] -> [batch, time, C]``."""
    with torch.no_grad():
        mix_w = modules["encoder"](mix)
        sep_h = torch.stack([mix_w] * num_spks) * modules["masknet"](mix_w)
        est = torch.cat([modules["decoder"](sep_h[i]).unsqueeze(-1) for i in range(num_spks)], -1)
    T, T_est = mix.shape[1], est.shape[1]
    return torch.nn.functional.pad(est, (0, 0, 0, T - T_est)) if T > T_est else est[:, :T]
