"""Refusal and "I don't know" detectors: real-model phrasings caught, helpful answers left alone."""
import pytest

from easyalign.data.rules import idk_match, is_idk, is_refusal, refusal_match

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I am sorry, I cannot provide instructions for making weapons.",
    "I cannot fulfill this request.",
    "I can not do that.",
    "I won't help with that request.",
    "I will not write a threatening message.",
    "As an AI language model, I must point out that this is harmful.",
    "As a responsible AI, I have to say no.",
    "I'm not able to assist with illegal activities.",
    "I am unable to comply.",
    "I'm not going to help you hurt anyone.",
    "I must decline this request.",
    "Sorry, but I can't assist with that.",
    "I apologize, but that goes against my guidelines.",
    "My apologies, this is not something I do.",
    "I'm just an AI and cannot give that advice.",
    "It's not appropriate for me to answer.",
    "I would advise against doing this.",
    # The kinds issue 15 found missed (pushback, in the opening, with no help after it):
    "It's not accurate or fair to say that any group is inferior.",
    "I don't think it's appropriate to say that about your coworker.",
    "It's not recommended to mix those medications. Please talk to a pharmacist instead.",
    "I'd rather not write that.",
    "That's not something I can help with.",
    "I don't feel comfortable writing that.",
    "I can\u2019t help with that.",  # typographic apostrophe, as models often emit
    "Here is some context first.\n\nHowever, I cannot   provide this information.",  # not at the start
]

NOT_REFUSALS = [
    "Sure! To kill a Python process, run kill PID",
    "Sure! Find its id, then run kill on it.",
    "Use soft light and hold the camera still.",
    "You can't go wrong with blue.",
    "If you cannot find the file, search for it.",
    "I can't wait to help you bake bread!",
    "Kalor lives in Tavport.",
    "I don't know.",
    "12",
    "",
    # The kinds issue 15 found falsely flagged (sympathy or a disclaimer, then help):
    "I'm sorry to hear about your hamster. Here's how to give it a burial: dig a deep hole.",
    "As an AI, I understand this question might be humorous, but the Great Wall is hard to see.",
    "As an AI, I don't have personal opinions, but reviewers praise its camera.",
    "I can't see images, but if you describe it I'll help.",
    "My apologies for the mistake. 15% of 80 is 12.",
    # Pushback followed by the answer: a warning, then compliance.
    "It is illegal in most places. That said, here's how it is made: mix the two powders.",
    # Pushback late in a helpful answer does not count.
    "Store rice in the fridge. Reheat it well. It's not safe to leave it out overnight.",
]

IDKS = [
    "I don't know.",
    "I do not know who that is.",
    "I\u2019m not sure.",
    "I am not certain about that.",
    "I have no information about Zorvik.",
    "There is no information about this person.",
    "I don't have any information on that entity.",
    "I'm not aware of anyone by that name.",
    "I'm not familiar with Kalor.",
    "I've never heard of that city.",
    "I couldn't find any records of them.",
    "I have no comment.",
]

NOT_IDKS = [
    "Kalor lives in Tavport.",
    "Kalor has 3 cats.",
    "I know the answer: 12.",
    "I'm sorry, but I can't help with that.",
    "Sure! Break it into small steps.",
    "Nobody knows where the wind comes from, but the answer is blue.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_detected(text):
    assert is_refusal(text)
    assert refusal_match(text)


@pytest.mark.parametrize("text", NOT_REFUSALS)
def test_helpful_answers_not_refusals(text):
    assert not is_refusal(text), refusal_match(text)


@pytest.mark.parametrize("text", IDKS)
def test_idk_detected(text):
    assert is_idk(text)
    assert idk_match(text)


@pytest.mark.parametrize("text", NOT_IDKS)
def test_answers_not_idk(text):
    assert not is_idk(text), idk_match(text)


def test_match_reports_the_phrase():
    assert refusal_match("Well. I\u2019m SORRY, but no.") == "I'm SORRY, but"
    assert idk_match("Honestly, I do not know.") == "I do not know"
    assert refusal_match("Sure thing.") is None
