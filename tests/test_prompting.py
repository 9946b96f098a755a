"""Prompt templates and answer → code extraction, on real tasks and hand-built answers."""

import pytest

from codellm_jax import prompting
from codellm_jax.evaluation import programs
from codellm_jax.evaluation.tasks import load_task_set


@pytest.fixture(scope='module')
def py2java():
    return load_task_set('py2java')


@pytest.fixture(scope='module')
def he_python():
    return load_task_set('humaneval-python')


def test_zero_shot_prompt_ends_inside_the_method(py2java):
    task = py2java.tasks[0]
    prompt = prompting.translation_prompt(task)
    assert prompt.startswith(prompting.TRANSLATION_HEADER)
    assert prompt.endswith(task.declaration)
    assert task.source_code.strip() in prompt
    assert prompt.count('### Python') == 1 and prompt.count('### Java') == 1


def test_few_shot_prompt_uses_pool_examples_with_reference_answers(py2java):
    task = py2java.tasks[3]
    shots = py2java.fewshot[:2]
    prompt = prompting.translation_prompt(task, shots, with_docstring=False)
    assert prompt.count('### Python') == 3
    for ex in shots:
        assert ex.source_code_nodoc.strip() in prompt
        assert ex.declaration + ex.reference_completion in prompt
    assert prompt.endswith(task.declaration)
    assert task.source_code_nodoc.strip() in prompt
    # Few-shot pool and eval set are disjoint; a task can't be its own example.
    assert not {t.task_id for t in py2java.fewshot} & {t.task_id for t in py2java.tasks}
    with pytest.raises(ValueError, match='task itself'):
        prompting.translation_prompt(task, [task])


def test_generation_prompt_is_the_task_prompt(he_python):
    task = he_python.tasks[0]
    assert prompting.generation_prompt(task) == task.prompt


def test_completion_cut_at_class_end(py2java):
    task = py2java.tasks[0]
    answer = task.reference_completion + '\n\n### Python\ndef other(): pass\n### Java\n'
    ex = prompting.extract_code(answer, task, 'translation')
    assert ex.kind == 'completion'
    assert ex.code.strip() == task.reference_completion.strip()


def test_completion_trailing_garbage_after_class_is_dropped(py2java):
    task = py2java.tasks[0]
    answer = task.reference_completion + '\nclass Extra { } // more text }}'
    ex = prompting.extract_code(answer, task, 'generation')
    assert ex.code.strip() == task.reference_completion.strip()


def test_completion_missing_closing_braces_are_added():
    task = _toy_java_task()
    ex = prompting.extract_code('        return x + 1;\n    }', task, 'translation')
    assert ex.kind == 'completion'
    assert ex.code == '        return x + 1;\n    }\n}\n'


def test_braces_in_strings_and_comments_do_not_count():
    task = _toy_java_task()
    body = '        String s = "}}"; // }\n        /* } */ char c = \'}\';\n        return x;\n    }\n}\n'
    ex = prompting.extract_code(body + 'junk after', task, 'translation')
    assert ex.code == body.rstrip('\n')  # cut right after the brace that closes the class


def test_chat_answer_with_fenced_whole_class(py2java):
    task = py2java.tasks[5]
    answer = (
        'Sure! Here is the translation:\n\n```java\nimport java.util.stream.*;\n'
        + task.reference_code.replace('class Solution', 'public class Solution')
        + '\n```\nIt uses a loop.'
    )
    ex = prompting.extract_code(answer, task, 'translation')
    assert ex.kind == 'program'
    assert 'class Solution' in ex.code and 'It uses a loop' not in ex.code
    program = programs.java_program(task, ex)
    assert 'public class Solution' not in program
    assert program.index('import java.util.stream.*;') < program.index('class Solution')
    assert program.rstrip().endswith(task.test.rstrip())


def test_whole_class_followed_by_its_own_main_is_cut():
    task = _toy_java_task()
    answer = 'class Solution {\n  int f(int x) { return x; }\n}\npublic class Main { }\n'
    ex = prompting.extract_code(answer, task, 'translation')
    assert ex == prompting.Extracted(
        'program', 'class Solution {\n  int f(int x) { return x; }\n}\n'
    )


def test_python_completion_stops_at_next_top_level(he_python):
    task = he_python.tasks[2]
    answer = task.reference_completion + '\n\ndef unrelated():\n    pass\n'
    ex = prompting.extract_code(answer, task)
    assert ex == prompting.Extracted('completion', task.reference_completion + '\n')


def test_python_fenced_whole_function(he_python):
    task = he_python.tasks[5]
    code = task.reference_code.split('\n\n\n', 1)[1] if '\n\n\n' in task.reference_code else ''
    answer = f'Here you go:\n```python\n{code}```\n'
    ex = prompting.extract_code(answer, task)
    assert task.entry_point and ex.kind == 'program'
    assert f'def {task.entry_point}(' in ex.code
    program = programs.python_program(task, ex)
    assert program.startswith('from typing import List')


@pytest.mark.parametrize('answer', ['', '   \n\t', '```java\n```'])
def test_empty_answers(answer, py2java):
    assert prompting.extract_code(answer, py2java.tasks[0], 'translation').kind == 'empty'


def test_prose_is_not_code(py2java, he_python):
    prose = 'I am sorry, but I cannot translate this function'
    assert prompting.extract_code(prose, py2java.tasks[0], 'translation').kind == 'not_code'
    assert prompting.extract_code(prose, he_python.tasks[0]).kind == 'not_code'


def test_stop_sequences():
    assert prompting.stop_sequences('translation', 'java') == ('\n### ',)
    assert '\ndef ' in prompting.stop_sequences('generation', 'python')


def _toy_java_task():
    from codellm_jax.evaluation.tasks import Task

    return Task(
        task_id='toy/0',
        language='java',
        prompt='',
        declaration='import java.util.*;\n\nclass Solution {\n    public int f(int x) {\n',
        test='public class Main { public static void main(String[] a) {} }',
        reference_completion='        return x + 1;\n    }\n}\n',
        reference_code='',
        source_code='def f(x):\n    return x + 1\n',
    )
