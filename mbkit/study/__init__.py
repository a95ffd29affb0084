"""The study machinery, apart from the method it studies.

    methods        the methods each notebook compares, and a notebook's grid from its parameters
    runs           one run of a grid in its own folder: its name, record, run.log and lock
    grid           grids of runs over methods and seeds; `Executor`: this process or Ray
    ray_executor   the Ray executor: one Ray task per run, retries, clear failures
    tables         mean ± std over seeds, the thesis's layout, the popularity floor as a row
    stats          paired changes over seeds with intervals, the verdict rule, the choice of r
    cost           what a training step of each method costs, timed in turns
    balance_map    notebook 05's map over the synthetic world's dials
    checks         does a re-run reproduce the committed results
    decision       notebooks 03 and 04 at the seeds their headline comparisons need (`make decision`)
    published      the thesis's Tables 2 and 3, as data
    plots          deterministic figures
    notebook       what the notebooks share: where their outputs go
    reproduce      run the notebooks with papermill
    headline       the README's results block, generated from results/
"""
