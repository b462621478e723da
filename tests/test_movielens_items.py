"""ml-100k.item has one parser (movielens.read_items); the genre task and LLaRA both read it."""

from eraser_dist.experiments.llara import read_titles
from eraser_dist.experiments.movielens import read_items, read_movies


def test_llara_titles_are_the_parsers_titles_for_every_item():
    items = read_items()
    assert [m.item_id for m in items] == [str(i) for i in range(1, 1683)]
    titles = read_titles()
    assert titles == {m.item_id: m.title for m in items}
    assert (titles["1"], titles["1682"]) == ("Toy Story", "Scream of Stone (Schrei aus Stein)")


def test_the_genre_task_keeps_the_parsed_movies_with_a_year_and_genres():
    items = {m.item_id: m for m in read_items()}
    movies = read_movies()
    assert all(items[m.item_id] == m for m in movies)
    # The two items without genres: one lacks its year too (the file spells it "unkonwn").
    assert sorted(set(items) - {m.item_id for m in movies}, key=int) == ["267", "1373"]
    assert items["1373"].genres == ("unknown",) and items["1373"].year == "1971"
