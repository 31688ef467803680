# Textual Inversion embeddings (base model frozen): one job per modality and class trains each embedding variant
# (train_embedding.variants) in turn, a file per variant in the class's folder.


rule train_embedding:
    input:
        prepared=f"{OUT['prepared']}/{{modality}}",
    output:
        embeddings=directory(f"{OUT['embeddings']}/{{modality}}/{{cls}}"),
        report=directory(f"{OUT['train_reports']}/{{modality}}/{{cls}}"),
    log:
        "logs/train_embedding/{modality}/{cls}.log",
    benchmark:
        "benchmarks/train_embedding/{modality}/{cls}.tsv"
    priority: PRIORITY["train_embedding"]
    conda:
        "../envs/medti.yaml"
    threads: embedding_threads
    resources:
        gpu=gpu("base_model"),
    params:
        settings=settings("train_embedding", "base_model", "seed"),
    shell:
        "medti train-embedding --params params.yaml --modality {wildcards.modality} --class {wildcards.cls}"
        " --manifest {input.prepared}/manifest.csv --out {output.embeddings} --report-dir {output.report}"
        " --log {log} 2> {log}"
