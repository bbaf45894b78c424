"""The TorchX component that trains one repeatlab grid point under torchrun.

    torchx run -s local_cwd repeatlab/torchx_component.py:trainer_component --run_url file:///... --nproc_per_node 2
    torchx run -s kubernetes --dryrun repeatlab/torchx_component.py:trainer_component \\
        --run_url s3://... --nnodes 2 --gpu 8

TorchX parses a component's arguments from its run-time annotations, so this module does not use
`from __future__ import annotations` and spells types the way TorchX decodes them (Optional[Dict[str, str]]).
Importing it needs torchx (the `torchx` extra).
"""

from torchx import specs

from repeatlab.launch import DEFAULT_IMAGE, TRAIN_MODULE


def trainer_component(
    run_url: str,
    image: str = DEFAULT_IMAGE,
    nnodes: int = 1,
    nproc_per_node: int = 1,
    cpu: int = 2,
    gpu: int = 0,
    memMB: int = 8192,
    env: dict[str, str] | None = None,
    max_retries: int = 0,
    rdzv_port: int = 29500,
) -> specs.AppDef:
    """Train one repeatlab grid point with torchrun (python -m repeatlab.train --run-url RUN_URL).

    Args:
        run_url: the run folder holding point.json and the plan ({root}/runs/{point_id})
        image: container image with repeatlab installed (ignored by the local_cwd scheduler)
        nnodes: number of nodes (replicas)
        nproc_per_node: processes per node (explicit; for GPU nodes at most the GPUs per node)
        cpu: CPUs per node
        gpu: GPUs per node
        memMB: memory per node in MB
        env: extra environment variables (e.g. REPEATLAB_S3_ENDPOINT_URL=http://...)
        max_retries: scheduler retries; a retry resumes from the last checkpoint
        rdzv_port: c10d rendezvous port on the first node (multi-node only)
    """
    from torchx.components.dist import torchrun

    full_env = {"OMP_NUM_THREADS": "1"} if int(gpu) == 0 else {}
    full_env.update(env or {})
    app = torchrun(
        "--run-url",
        run_url,
        m=TRAIN_MODULE,
        image=image,
        name="repeatlab-train",
        cpu=int(cpu),
        gpu=int(gpu),
        memMB=int(memMB),
        j=f"{int(nnodes)}x{int(nproc_per_node)}",
        env=full_env,
        max_retries=int(max_retries),
        rdzv_port=int(rdzv_port),
    )
    # TorchX writes `bash -c "torchrun ..."`: the `torchrun` script first on the PATH, which in the CUDA image is the
    # base image's (conda's Python, without repeatlab); its workers start with that script's interpreter. The image
    # venv's `python -m torch.distributed.run` is the same launcher under the right interpreter.
    for role in app.roles:
        if role.entrypoint != "bash" or len(role.args) != 2 or not role.args[1].startswith("torchrun "):
            raise RuntimeError(f"torchx's torchrun component changed shape: {role.entrypoint} {role.args}")
        role.args[1] = "python -m torch.distributed.run " + role.args[1][len("torchrun ") :]
    return app
