# Data: the embedded phantom DICOMs (default) and ingestion into a de-identified, split dataset.


rule phantoms:
    output:
        directory(f"{OUT['phantoms']}/{{modality}}"),
    log:
        "logs/phantoms/{modality}.log",
    benchmark:
        "benchmarks/phantoms/{modality}.tsv"
    conda:
        "../envs/medti.yaml"
    threads: 1
    params:
        settings=lambda wc: config["phantoms"],
    shell:
        "medti phantoms --params params.yaml --modality {wildcards.modality} --out {output} --log {log} 2> {log}"


rule prepare:
    input:
        source_inputs,
    output:
        directory(f"{OUT['prepared']}/{{modality}}"),
    log:
        "logs/prepare/{modality}.log",
    benchmark:
        "benchmarks/prepare/{modality}.tsv"
    priority: PRIORITY["prepare"]
    conda:
        "../envs/medti.yaml"
    threads: config["prepare"]["workers"]
    params:
        settings=settings("prepare", "seed"),
    shell:
        "medti prepare --params params.yaml --modality {wildcards.modality} --out {output} --log {log} 2> {log}"
