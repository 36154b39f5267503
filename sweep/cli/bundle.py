import click

from mnist_core.config import ACTIVATIONS, SCHEDULES

from .common import reports_errors, spec_argument, tracking_option


@click.command("bundle")
@spec_argument
@click.option("--student-id", required=True, metavar="ID", help="Your student id (letters, digits, '-' and '_').")
@click.option("--activation", type=click.Choice(ACTIVATIONS), default="relu", show_default=True,
              help="Activation of the network handed in.")
@click.option("--depth", type=click.IntRange(min=1), default=2, show_default=True, help="Its hidden layers.")
@click.option("--width", type=click.IntRange(min=1), default=50, show_default=True, help="Units per hidden layer.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="fixed", show_default=True,
              help="Its learning-rate schedule.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, metavar="LR",
              help="Train at this learning rate. [default: the one the sweep found best for the setting]")
@click.option("--epochs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Training epochs. [default: the sweep's, for the setting]")
@click.option("--seed", type=click.IntRange(min=0), default=None, metavar="N",
              help="Seed of the weights and the data order. [default: the lowest the sweep used]")
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="MNIST_DATA", default=None,
              help="Folder with MNIST. [default: $MNIST_DATA, else ./data]")
@click.option("--device", default="auto", show_default=True, help="Where mnist.py trains: auto, cpu, cuda, cuda:N.")
@click.option("--course", default="CSE4152", show_default=True, help="Course code, the start of the file names.")
@click.option("--homework", type=click.IntRange(min=0), default=5, show_default=True, help="Homework number.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for the zip.")
@tracking_option
@reports_errors
def command(spec, student_id, activation, depth, width, schedule, lr, epochs, seed, data_dir, device, course,
            homework, out_dir, tracking_uri):
    """Zip the hand-in of SPEC's sweep: mnist.py, its report as a PDF, and an agent mnist.py trains.

    The agent is the homework's network, 784-50-50-10 with ReLU at a fixed learning rate (or the
    setting --activation, --depth, --width and --schedule name), trained at the learning rate the
    sweep found best for it (the lowest mean validation error over seeds, else test error, as
    `sweep best` ranks), with the sweep's epochs and batch size, on all 60,000 training images, by
    the very mnist.py that goes into the zip (training is printed as it goes).

    COURSE_ID_hwN.zip holds mnist.py (needs only torch and torchvision), the report as
    COURSE_ID_HWnn.pdf, mnist_agent.pt, the network's plain state_dict (`model = Net();
    model.load_state_dict(torch.load("mnist_agent.pt", weights_only=True))`), and mnist_agent.json,
    its settings and errors. The zip's comment says what was handed in and why."""
    from ..handin.bundle import AGENT_NAME, SETTINGS_NAME, bundle_names, bundle_sweep
    from ..spec import load_spec

    def announce(choice):
        click.echo(f"handing in {choice}")
        s = choice.settings
        epochs = f"{s['epochs']} epoch" + ("s" if s["epochs"] != 1 else "")
        click.echo(f"training it with mnist.py on all training images: {epochs}, batch {s['batch_size']}, "
                   f"seed {s['seed']}")

    setting = {"activation": activation, "depth": depth, "width": width, "schedule": schedule}
    path, _, trained = bundle_sweep(load_spec(spec), tracking_uri, student_id, setting=setting, lr=lr, epochs=epochs,
                                    seed=seed, data_dir=data_dir, device=device, course=course, homework=homework,
                                    out_dir=out_dir, on_choice=announce, on_line=lambda line: click.echo(f"  {line}"))
    metrics = trained["metrics"]
    click.echo(f"agent: {trained['network']}, test error {100 * metrics['final_test_error']:.2f}% after "
               f"{metrics['training_seconds']:.0f}s of training")
    click.echo(f"hand-in written to {path}: mnist.py, {bundle_names(student_id, course, homework)[1]}, "
               f"{AGENT_NAME}, {SETTINGS_NAME}")
