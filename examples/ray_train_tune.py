"""Fine-tune with tunelab on a Ray cluster: Ray Train's TorchTrainer starts the workers and their torch.distributed
process group (gloo on CPUs, NCCL on GPUs); tunelab.finetune joins that group, trains each worker on its shard of
every global batch, and rank 0 writes the artifact.

    python examples/ray_train_tune.py --task vader --workers 2 --out /shared/runs/lora-vader

`--out` must be a folder every worker can reach (on one machine any folder; on a cluster, shared storage), because
rank 0 writes the checkpoints that a resumed run (`--resume`) reads on every worker. With `ray start --address ...`
already run, the same script uses that cluster.
"""

from __future__ import annotations

import argparse
import os


def train_worker(config: dict) -> None:
    """What each Ray Train worker runs: plain tunelab (the process group is already set up by Ray Train)."""
    import tunelab

    model = tunelab.load_model(config["model"])
    task = tunelab.load_task(config["task"])
    tune = tunelab.TuneConfig(method=config["method"], epochs=config["epochs"], min_steps=config["min_steps"])
    predictor = tunelab.finetune(model, task, tune, out_dir=config["out"], resume=config["resume"],
                                 overwrite=not config["resume"])
    if predictor is not None:  # rank 0
        metrics = predictor.meta["metrics"]
        print(f"accuracy {metrics.get('accuracy')} on {metrics['n_test']} test examples; "
              f"{predictor.meta['training']['distributed']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="vader")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--min-steps", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=int, default=1)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import ray
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"task": args.task, "model": args.model, "method": args.method, "epochs": args.epochs,
                           "min_steps": args.min_steps, "out": os.path.abspath(args.out), "resume": args.resume},
        # processes x threads <= cores: each worker gets its CPUs, and Ray sets OMP_NUM_THREADS to them
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=args.gpu,
                                     resources_per_worker={"CPU": args.cpus_per_worker}),
    )
    trainer.fit()


if __name__ == "__main__":
    main()
