# Synthetic training sets from the embeddings.


rule generate:
    input:
        embeddings=lambda wc: expand(f"{OUT['embeddings']}/{wc.modality}/{{cls}}.safetensors", cls=classes(wc.modality)),
    output:
        directory(f"{OUT['synthetic']}/{{modality}}"),
    params:
        settings=settings("generate", "base_model", "seed"),
        embeddings=parent_of("embeddings"),
    log:
        "logs/generate/{modality}.log",
    benchmark:
        "benchmarks/generate/{modality}.tsv"
    conda:
        "../envs/medti.yaml"
    threads: 2
    resources:
        gpu=GPU,
    shell:
        "medti generate --params params.yaml --modality {wildcards.modality} --embeddings {params.embeddings}"
        " --out {output} --log {log}"
