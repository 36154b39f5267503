import click

from .common import reports_errors, spec_argument, tracking_option


@click.command("bundle")
@spec_argument
@click.option("--student-id", required=True, metavar="ID", help="Your student id (letters, digits, '-' and '_').")
@click.option("--course", default="CSE4152", show_default=True, help="Course code, the start of the file names.")
@click.option("--homework", type=click.IntRange(min=0), default=5, show_default=True, help="Homework number.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder for the zip.")
@tracking_option
@reports_errors
def command(spec, student_id, course, homework, out_dir, tracking_uri):
    """Zip the hand-in of SPEC's sweep: mnist.py, its report as a PDF and its best run's agent.

    COURSE_ID_hwN.zip holds mnist.py (needs only torch and torchvision), the sweep's report as
    COURSE_ID_HWnn.pdf and, as mnist_agent.pt, the agent of the best run ranked as `sweep best`
    ranks (lowest mean validation error, else test error, over seeds; its best seed's run). The
    zip's comment names that run."""
    from ..handin.bundle import bundle_names, bundle_sweep
    from ..spec import load_spec

    path, winner = bundle_sweep(load_spec(spec), tracking_uri, student_id, course=course, homework=homework,
                                out_dir=out_dir)
    click.echo(str(winner))
    click.echo(f"hand-in written to {path}: mnist.py, {bundle_names(student_id, course, homework)[1]}, "
               f"mnist_agent.pt")
