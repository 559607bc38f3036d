"""``sglr export`` and ``sglr predict``."""

from pathlib import Path

import click
from rich.table import Table

from sglr_keras.cli.main import console, results_console, sglr, user_errors


@sglr.command("export")
@click.option("--checkpoint", required=True, type=click.Path(), help="A .keras classifier (e.g. runs/x/best.keras).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="TF Serving model base folder; the model goes to OUT/NAME/VERSION.")
@click.option("--name", default="sglr", show_default=True, help="Model name (the folder TF Serving serves).")
@click.option("--version", "version", type=int, help="Version folder (default: the next free number).")
@click.option("--input-shape", help="H,W,C for a model whose input shape is not fixed.")
@user_errors
def export_command(checkpoint, out_dir, name, version, input_shape):
    """Write a SavedModel that TF Serving loads as it is, with a model card."""
    from sglr_keras import checkpoints
    from sglr_keras.errors import UserError
    from sglr_keras.export.savedmodel import export_saved_model

    shape = None
    if input_shape:
        try:
            shape = tuple(int(d) for d in input_shape.split(","))
        except ValueError:
            raise UserError(f"--input-shape {input_shape!r} must be three whole numbers H,W,C")
    model = checkpoints.load_classifier(checkpoint)
    card = checkpoints.model_card(checkpoint)
    target = export_saved_model(model, out_dir, name, version, card, shape)
    console.print(f"exported {checkpoint} -> {target}", highlight=False)
    if not card["evaluation"]:
        console.print(f"note: the model card has no robustness numbers: {card['evaluation_note']}; run "
                      f"`sglr eval --checkpoint {checkpoint}` before exporting to include them",
                      highlight=False, soft_wrap=True)
    else:
        threat = card["threat_model"]
        console.print(f"model card: {', '.join(card['evaluation'])} measured on this exact checkpoint "
                      f"({threat['norm']} eps {threat['eps']:.4g}, held-out points of {threat['dataset']})",
                      highlight=False)
    console.print(f"serve it: docker run -p 8501:8501 -v {Path(out_dir).resolve()}/{name}:/models/{name} "
                  f"-e MODEL_NAME={name} tensorflow/serving", highlight=False, soft_wrap=True)


@sglr.command()
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--saved-model", type=click.Path(file_okay=False), help="Predict locally with this SavedModel folder.")
@click.option("--server", help="TF Serving REST address, e.g. http://localhost:8501.")
@click.option("--model", "model_name", help="Model name on the server.")
@click.option("--model-version", type=int, help="Model version on the server (default: latest).")
@click.option("--card", type=click.Path(dir_okay=False), help="Model card JSON for class names and input shape "
              "when predicting through a server.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True, help="Classes to show per image.")
@click.option("--resize", is_flag=True, help="Resize images that do not match the model's input size.")
@user_errors
def predict(images, saved_model, server, model_name, model_version, card, top_k, resize):
    """Top-k classes for image files, from a SavedModel or a TF Serving server."""

    from sglr_keras.errors import UserError
    from sglr_keras.export import client
    from sglr_keras.export.savedmodel import SavedModelClassifier, read_card_file

    if bool(saved_model) == bool(server):
        raise UserError("pass either --saved-model DIR or --server URL --model NAME")
    if saved_model:
        model_card = SavedModelClassifier(saved_model).card
    else:
        if not model_name:
            raise UserError("--server needs --model NAME")
        if not card:
            raise UserError("--server needs --card (the exported assets.extra/model_card.json) for the input shape")
        model_card = read_card_file(card)
    if "input_shape" not in model_card:
        raise UserError("the model card has no input_shape; pass the card written by sglr export")
    batch = client.load_images(images, model_card["input_shape"], resize)
    outputs = (client.predict_local(saved_model, batch) if saved_model
               else client.predict_rest(server, model_name, batch, model_version))
    table = Table("image", "class", "probability")
    for path, ranking in zip(images, client.top_k(outputs["probabilities"], top_k, model_card.get("class_names"))):
        for i, (class_id, class_name, probability) in enumerate(ranking):
            table.add_row(path if i == 0 else "", f"{class_name} ({class_id})", f"{probability:.3f}")
    results_console.print(table)
