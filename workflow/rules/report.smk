# One self-contained HTML report (and Markdown) per pipeline run.


rule report:
    input:
        evaluate=expand(f"{OUT['evaluate']}/{{modality}}", modality=MODALITIES),
        prepared=expand(f"{OUT['prepared']}/{{modality}}", modality=MODALITIES),
        synthetic=expand(f"{OUT['synthetic']}/{{modality}}/{{variant}}", modality=MODALITIES, variant=VARIANTS),
        interpolate=expand(f"{OUT['interpolate']}/{{modality}}", modality=MODALITIES),
        train_reports=[f"{OUT['train_reports']}/{m}/{c}" for m in MODALITIES for c in classes(m)],
    output:
        directory(OUT["report"]),
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        "../envs/medti.yaml"
    threads: 1
    params:
        settings=lambda wc: {k: v for k, v in config.items() if k != "_meta"},
    shell:
        f"medti report --params params.yaml --evaluate {OUT['evaluate']} --prepared {OUT['prepared']}"
        f" --synthetic {OUT['synthetic']} --train-reports {OUT['train_reports']}"
        f" --interpolate {OUT['interpolate']} --out {{output}}"
        " --log {log} 2> {log}"
