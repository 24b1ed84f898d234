"""Everything Ponder says to people, in English and Chinese, in one place.

`say(key, language, **values)` gives one text. Every key exists in both languages with the
same placeholders (tests/test_wording.py checks it), so a Chinese question never gets a
stray English line. Model prompts are not here: they are `bot/prompts.py`.
"""

from __future__ import annotations

from bot.events import Language

_EN: dict[str, str] = {
    # --- a chain's messages (the presenter) ---
    "step": "Step {i}",
    "thinking": "thinking…",
    "cut_short": "(cut short)",
    "answer": "Answer",
    "took": "{s} s",
    "summary": "Thought for {s} s · {n} steps",
    "summary_one": "Thought for {s} s · 1 step",
    # --- self-consistency votes (under a voted answer) ---
    "votes_agree": "{a} of {k} lines of reasoning agree",
    "votes_tie": "No majority: {a} of {k} lines of reasoning give this answer, as many give "
                 "another",
    "votes_others": "others said {others}",
    "votes_count": "{answer} ({n})",
    "votes_sep": ", ",
    "votes_failed": "{n} ended without an answer",
    "votes_grouped": "free-text answers grouped by the model",
    "summary_chains": "{n} chains",
    "stopped": "Stopped after {s} s.",
    "failed": "Gave up after {s} s.",
    "continued": "…continued below",
    "cut_by_restart": "cut short by a restart",
    "delayed": "(delayed: the platform could not be reached when this was written)",
    # --- the service's notices ---
    "restarting": "Ponder is restarting — this chain will pick up where it stopped.",
    "resuming": "↻ Ponder restarted — picking up again at step {n}.",
    "waiting": "⏳ The model server is not answering; retrying for up to {s} s.",
    "waited": "✓ The model server is answering again.",
    "gave_up_waiting": "The model server did not answer for {s} s; trying once more.",
    "waiting_stopped": "The model server was not answering.",
    "internal": "Ponder hit an internal error on this question; please ask again.",
    "no_answer": "The chain ended without an answer.",
    "store_failed": "Ponder could not save this conversation (its storage is full or "
                    "read-only); the answer above may be incomplete. An operator has been told "
                    "in the log.",
    # --- `ponder forget` (an operator's command) ---
    "forgot": "Forgot {user}{where}: removed {chains} chains (follow-ups included) and {steps} "
              "steps, with their answers and delivery state; {rewritten} other chains no "
              "longer quote them.",
    "forget_running": "{user} has {n} chain(s) still marked running (a live Ponder may be "
                      "answering); nothing removed. Wait for it to finish, or use --force.",
    "forget_on": " on {platform}",
    # --- the model server failing (`bot/llm.py`) ---
    # Where the server is goes to the log, never to a chat.
    "llm_no_server": "no model server answers — start one with `ponder model serve` or set "
                     "OPENAI_BASE_URL",
    "llm_timed_out": "the model server did not answer within {s} s — check its load, or raise "
                     "PONDER_REQUEST_TIMEOUT",
    "llm_failing": "the model server kept failing ({detail}) — check its logs; retried with "
                   "backoff",
    "llm_too_long": "this question, with the thread's earlier turns and the steps so far, does "
                    "not fit in the model's context window — ask a shorter question, or start "
                    "a new thread",
    "llm_not_openai": "the model server answered something other than a model list — check "
                      "that OPENAI_BASE_URL ends in /v1",
    "turns_left_out": "ℹ️ Earlier turns of this thread were left out to fit the model's "
                      "context.",
    "llm_refused": "the model server refused the request (HTTP {status}: {why})",
    "llm_refused_model": "the model server refused the request (HTTP {status}: {why}) — "
                         "check PONDER_MODEL",
    # --- refusals (admission) ---
    "not_accepting": "Ponder is restarting; please ask again in a minute.",
    "empty": "Please include a question — for example: Is 221 prime?",
    "too_long": "That question is {n} characters long; the limit is {limit}. "
                "Please shorten it.",
    "user_not_allowed": "Sorry, you are not on the list of people who may use Ponder here.",
    "channel_not_allowed": "Sorry, Ponder does not answer in this channel.",
    "team_not_allowed": "Sorry, Ponder is not enabled for this server or workspace.",
    "too_many_one": "You already have 1 question being answered; please wait for one to "
                    "finish.",
    "too_many": "You already have {n} questions being answered; please wait for one to "
                "finish.",
    "too_fast": "You are asking faster than {n} a minute; please try again in {s} s.",
    "busy": "I am still on the previous question here; please wait for its answer.",
    # --- the line under a chain's opening message ---
    "asked": "🤔 {who} asked:",
    "follow_up_from": "↪️ Follow-up from {who}",
    "running": "Reasoning step by step …",
    "running_in": "Reasoning step by step in {where} …",
    "will_resume": "↻ Interrupted by a restart; it picks up again when Ponder is back",
    "stopped_line": "⏹️ Stopped after {s} s",
    "could_not_start": "⚠️ Could not start: {why}",
    "went_wrong": "⚠️ Something went wrong on Ponder's side; please try again.",
    "went_wrong_thinking": "Something went wrong while thinking: {why}",
    # --- Discord ---
    "stop": "Stop",
    "already_finished": "This chain has already finished.",
    "only_asker_stops": "Only the person who asked, or someone who may manage messages, can "
                        "stop this.",
    "only_asker_or_admin_stops": "Only the person who asked, or a workspace admin, can stop "
                                 "this.",
    # --- feedback on an answer (shown to the voter alone) ---
    "feedback_new": "Thanks for the feedback ({vote}).",
    "feedback_changed": "Changed your vote to {vote}.",
    "feedback_same": "You already gave this answer {vote}.",
    "feedback_unknown": "This answer is no longer on record, so it cannot take feedback.",
    "feedback_failed": "Your feedback could not be saved just now; please try again later.",
    # --- `ponder stats` ---
    "stats_title": "Ponder, the last {n} days (each chain on the day it started)",
    "stats_day": "day",
    "stats_answers": "answers",
    "stats_failures": "failures",
    "stats_stopped": "stopped",
    "stats_steps": "median steps",
    "stats_thinking": "median thinking",
    "stats_total": "total",
    "no_thread_here": "I could not start a thread here ({why}), so I answer here.",
    "in_thread_already": "We are in a thread already, so I answer right here.",
    "no_thread_permission": "I may not start threads in this channel (Create Public Threads "
                            "and Send Messages in Threads), so I answer right here.",
    "no_threads": "Threads are not available here, so I answer right here.",
    "via_interaction": "I cannot write in this channel, so I answer through this command: "
                       "one message per step. Follow-up questions cannot reach me here; "
                       "use the command again.",
    "token_ran_out": "Discord lets a command answer for 15 minutes, and this chain needed "
                     "longer: the steps so far are above. To go on, ask again in a server "
                     "channel where Ponder can open a thread (no time limit there), or ask "
                     "a narrower question.",
    "discord_wait": "Discord asks to wait {s} s",
    "missing_permission": "missing permission",
    "discord_said": "Discord said {status}: {why}",
    "discord_timeout": "Discord did not answer in time",
    # --- Slack ---
    "thinking_status": "is thinking…",
    # --- Slack's assistant panel ---
    "assistant_greeting": "Hi! Ask me anything that takes some thinking — I work through it "
                          "step by step, and you can watch each step as it happens.",
    "assistant_prompts_title": "Try one of these:",
    "assistant_prompt_1_title": "A bat and a ball",
    "assistant_prompt_1": "A bat and a ball cost $1.10 in total. The bat costs $1.00 more than "
                          "the ball. How much does the ball cost?",
    "assistant_prompt_2_title": "Should I switch doors?",
    "assistant_prompt_2": "In the Monty Hall problem, should you switch doors after the host "
                          "opens one? Explain why.",
    "assistant_prompt_3_title": "Machines and widgets",
    "assistant_prompt_3": "If 5 machines take 5 minutes to make 5 widgets, how long do 100 "
                          "machines take to make 100 widgets?",
    "internal_slack": "⚠️ Something went wrong on Ponder's side while answering this. "
                      "Please try again in a moment.",
}

_ZH: dict[str, str] = {
    "step": "第 {i} 步",
    "thinking": "思考中…",
    "cut_short": "（已中断）",
    "answer": "答案",
    "took": "{s} 秒",
    "summary": "思考用时 {s} 秒 · 共 {n} 步",
    "summary_one": "思考用时 {s} 秒 · 共 1 步",
    "votes_agree": "{k} 条推理中有 {a} 条一致",
    "votes_tie": "没有多数：{k} 条推理中有 {a} 条给出这个答案，另有同样多条给出别的答案",
    "votes_others": "其他答案：{others}",
    "votes_count": "{answer}（{n} 条）",
    "votes_sep": "、",
    "votes_failed": "{n} 条没有得出答案",
    "votes_grouped": "自由文本答案由模型归组",
    "summary_chains": "共 {n} 条推理链",
    "stopped": "已在 {s} 秒后停止。",
    "failed": "{s} 秒后放弃。",
    "continued": "……下文继续",
    "cut_by_restart": "因重启中断",
    "delayed": "（延迟送达：写下这条时无法连接平台）",
    "restarting": "Ponder 正在重启——这条推理会从中断处继续。",
    "resuming": "↻ Ponder 已重启——从第 {n} 步继续。",
    "waiting": "⏳ 模型服务器没有响应；最多重试 {s} 秒。",
    "waited": "✓ 模型服务器已恢复响应。",
    "gave_up_waiting": "模型服务器 {s} 秒内没有响应；再试一次。",
    "waiting_stopped": "模型服务器没有响应。",
    "internal": "Ponder 处理这个问题时出现内部错误；请重新提问。",
    "no_answer": "推理结束，但没有得到答案。",
    "store_failed": "Ponder 无法保存这段对话（存储已满或只读）；上面的答案可能不完整。"
                    "已在日志中告知管理员。",
    "forgot": "已删除 {user}{where} 的记录：{chains} 条推理链（含追问）和 {steps} 个步骤，"
              "连同答案和送达状态；另有 {rewritten} 条推理链不再引用它们。",
    "forget_running": "{user} 还有 {n} 条推理链标记为进行中（运行中的 Ponder 可能正在回答）；"
                      "未删除任何内容。请等它结束，或使用 --force。",
    "forget_on": "（{platform}）",
    "llm_no_server": "没有模型服务器响应——请用 `ponder model serve` 启动一个，"
                     "或设置 OPENAI_BASE_URL",
    "llm_timed_out": "模型服务器在 {s} 秒内没有响应——请检查它的负载，"
                     "或调大 PONDER_REQUEST_TIMEOUT",
    "llm_failing": "模型服务器一再出错（{detail}）——请查看它的日志；已退避重试",
    "llm_too_long": "这个问题连同本对话较早的内容和已有的推理步骤，超出了模型的上下文长度——"
                    "请缩短问题，或另开一个对话",
    "llm_not_openai": "模型服务器返回的不是模型列表——请检查 OPENAI_BASE_URL 是否以 /v1 结尾",
    "turns_left_out": "ℹ️ 为适应模型的上下文长度，本对话较早的几轮内容没有发送给模型。",
    "llm_refused": "模型服务器拒绝了请求（HTTP {status}：{why}）",
    "llm_refused_model": "模型服务器拒绝了请求（HTTP {status}：{why}）——请检查 PONDER_MODEL",
    "not_accepting": "Ponder 正在重启；请一分钟后再问。",
    "empty": "请写上问题——例如：221 是质数吗？",
    "too_long": "这个问题有 {n} 个字符，上限是 {limit}。请缩短一些。",
    "user_not_allowed": "抱歉，你不在可以使用 Ponder 的名单上。",
    "channel_not_allowed": "抱歉，Ponder 不在这个频道回答。",
    "team_not_allowed": "抱歉，这个服务器或工作区没有启用 Ponder。",
    "too_many_one": "你已有 1 个问题正在回答；请等它完成。",
    "too_many": "你已有 {n} 个问题正在回答；请等其中一个完成。",
    "too_fast": "你每分钟提问超过 {n} 次；请 {s} 秒后再试。",
    "busy": "我还在回答这里的上一个问题；请等它的答案。",
    "asked": "🤔 {who} 提问：",
    "follow_up_from": "↪️ {who} 的追问",
    "running": "正在逐步推理 …",
    "running_in": "正在 {where} 中逐步推理 …",
    "will_resume": "↻ 因重启中断；Ponder 恢复后会继续",
    "stopped_line": "⏹️ 已在 {s} 秒后停止",
    "could_not_start": "⚠️ 无法开始：{why}",
    "went_wrong": "⚠️ Ponder 这边出了问题；请再试一次。",
    "went_wrong_thinking": "思考时出了问题：{why}",
    "stop": "停止",
    "already_finished": "这条推理已经结束。",
    "only_asker_stops": "只有提问的人，或有管理消息权限的人，才能停止它。",
    "only_asker_or_admin_stops": "只有提问的人或工作区管理员才能停止它。",
    "feedback_new": "感谢反馈（{vote}）。",
    "feedback_changed": "已将你的评价改为 {vote}。",
    "feedback_same": "你已经给这个回答评过 {vote} 了。",
    "feedback_unknown": "这个回答已不在记录中，无法再评价。",
    "feedback_failed": "你的反馈暂时无法保存，请稍后再试。",
    "stats_title": "Ponder 最近 {n} 天（每条推理计入它开始的那天）",
    "stats_day": "日期",
    "stats_answers": "回答",
    "stats_failures": "失败",
    "stats_stopped": "停止",
    "stats_steps": "步数中位数",
    "stats_thinking": "思考时间中位数",
    "stats_total": "合计",
    "no_thread_here": "我无法在这里开启子区（{why}），所以就在这里回答。",
    "in_thread_already": "我们已经在子区里了，所以就在这里回答。",
    "no_thread_permission": "我在这个频道没有开启子区的权限（创建公开子区、在子区中发送消息），"
                            "所以就在这里回答。",
    "no_threads": "这里不能开启子区，所以就在这里回答。",
    "via_interaction": "我无法在这个频道发消息，所以通过这条命令回答：每一步一条消息。"
                       "在这里无法追问；请再次使用命令。",
    "token_ran_out": "Discord 只允许一条命令在 15 分钟内回答，而这条推理需要更久："
                     "目前的步骤在上面。要继续，请在 Ponder 能开启子区的服务器频道里再问一次"
                     "（那里没有时间限制），或者把问题问得更具体一些。",
    "discord_wait": "Discord 要求等待 {s} 秒",
    "missing_permission": "缺少权限",
    "discord_said": "Discord 返回 {status}：{why}",
    "discord_timeout": "Discord 没有及时响应",
    "thinking_status": "正在思考…",
    "assistant_greeting": "你好！有需要动脑的问题尽管问我——我会一步一步推理，"
                          "每一步都实时显示给你看。",
    "assistant_prompts_title": "试试这些：",
    "assistant_prompt_1_title": "球拍和球",
    "assistant_prompt_1": "球拍和球一共 1.10 美元，球拍比球贵 1.00 美元。球多少钱？",
    "assistant_prompt_2_title": "要不要换门？",
    "assistant_prompt_2": "在三门问题（蒙提霍尔问题）中，主持人打开一扇门后，"
                          "你应该换门吗？为什么？",
    "assistant_prompt_3_title": "机器和零件",
    "assistant_prompt_3": "5 台机器 5 分钟做 5 个零件，100 台机器做 100 个零件要多久？",
    "internal_slack": "⚠️ Ponder 回答这个问题时出了问题。请稍后再试。",
}

TEXTS: dict[Language, dict[str, str]] = {"en": _EN, "zh": _ZH}


def say(key: str, language: Language = "en", **values: object) -> str:
    """The text for `key` in `language`, its `{placeholders}` filled from `values`."""
    text = TEXTS[language][key]
    return text.format(**values) if values else text


def every(key: str) -> tuple[str, ...]:
    """`key`'s text in every language (for recognising what an earlier process wrote)."""
    return tuple(texts[key] for texts in TEXTS.values())
