"""inference/mixed_lora.py: a batch of rows on different adapters computes what each row computes alone."""

import torch
from peft import LoraConfig, get_peft_model

from loratune.inference.mixed_lora import MixedLoraForward
from loratune.models.load import load_model


def _two_adapters(tiny_llama_dir):
    model = load_model(str(tiny_llama_dir), device="cpu").model
    torch.manual_seed(0)
    # different ranks, scalings and targets: "fin" adapts fewer layers than "sql"
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  init_lora_weights=False), adapter_name="sql")
    peft_model.add_adapter("fin", LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj"], init_lora_weights=False))
    return peft_model.eval()


def test_mixed_rows_equal_each_row_alone(tiny_llama_dir):
    model = _two_adapters(tiny_llama_dir)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14], [15, 16, 17, 18, 19], [20, 21, 22, 23, 24]])
    rows = ["sql", "fin", "__base__", "sql"]
    with torch.inference_mode():
        alone = []
        for row, name in zip(ids, rows):
            if name == "__base__":
                with model.disable_adapter():
                    alone.append(model(input_ids=row[None]).logits[0])
            else:
                model.set_adapter(name)
                alone.append(model(input_ids=row[None]).logits[0])
        peft_mixed = model(input_ids=ids, adapter_names=rows).logits
        mixed = MixedLoraForward()
        assert mixed.install(model) == 3 * 2  # q, v and down projections of the 2 layers
        assert mixed.install(model) == 0  # installing again changes nothing
        ours = model(input_ids=ids, adapter_names=rows).logits
    for i in range(len(rows)):
        assert torch.allclose(ours[i], alone[i], atol=1e-5), rows[i]
    assert torch.allclose(ours, peft_mixed, atol=1e-5)
    assert not torch.allclose(alone[0], alone[2], atol=1e-3)  # the adapters do change the logits


def test_a_batch_of_base_rows_is_the_base_model(tiny_llama_dir):
    model = _two_adapters(tiny_llama_dir)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    mixed = MixedLoraForward()
    mixed.install(model)
    with torch.inference_mode():
        with model.disable_adapter():
            expected = model(input_ids=ids).logits
        got = model(input_ids=ids, adapter_names=["__base__", "__base__"]).logits
        model.set_adapter("sql")
        adapted = model(input_ids=ids).logits
    assert torch.equal(got, expected)
    assert not torch.allclose(adapted, expected, atol=1e-3)


def test_an_adapter_loaded_again_under_its_name_is_stacked_from_its_new_weights(tiny_llama_dir):
    model = _two_adapters(tiny_llama_dir)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    rows = ["sql", "fin"]
    mixed = MixedLoraForward()
    mixed.install(model)
    with torch.inference_mode():
        before = model(input_ids=ids, adapter_names=rows).logits  # stacks "sql" and "fin"
    model.delete_adapter("sql")
    torch.manual_seed(1)
    model.add_adapter("sql", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                        init_lora_weights=False))
    mixed.install(model)  # what the registry does after every load
    model.eval()
    with torch.inference_mode():
        got = model(input_ids=ids, adapter_names=rows).logits
        model.set_adapter("sql")
        alone = model(input_ids=ids[:1]).logits[0]
    assert torch.allclose(got[0], alone, atol=1e-5)
    assert not torch.allclose(got[0], before[0], atol=1e-3)
